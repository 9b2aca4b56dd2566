"""Jacobian arithmetic of `JacobianRegularizer` (private).

`jacobian_target` runs while the train step's forward pass is recorded on
the callback's `tf.GradientTape` (the tape watches the Jacobian's source):
it flattens the model's outputs and, for the projection estimator, draws
the random directions and projects onto them, so that these ops are on the
tape. `squared_norms` then turns the recorded tape into the (estimated)
squared Frobenius norm of each example's Jacobian.
"""

import warnings

import tensorflow as tf

from keras_research._xla import in_xla_context

# `method="exact"` warns above this many outputs (see the benchmark).
WARN_EXACT_OUTPUTS = 100


def is_float(dtype):
    return tf.as_dtype(dtype).is_floating


def compute_dtype(dtype):
    """float32 for half-precision dtypes; float32/float64 as they are."""
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in (tf.float16, tf.bfloat16) else dtype


def to_float32(t):
    """Widens half-precision tensors; keeps float32/float64 as they are."""
    return tf.cast(t, compute_dtype(t.dtype))


def describe(t):
    """A short description of a value for error messages."""
    if isinstance(t, tf.RaggedTensor):
        return f"a tf.RaggedTensor of dtype {t.dtype.name}"
    if isinstance(t, tf.SparseTensor):
        return f"a tf.SparseTensor of dtype {t.dtype.name}"
    dtype = getattr(t, "dtype", None)
    dtype = getattr(dtype, "name", dtype)
    return f"a {type(t).__name__} of dtype {dtype}"


def random_directions(shape, dtype, seed, step):
    """Unit vectors along the last axis, uniform on the sphere.

    Drawn by a stateless generator from `(seed, step, replica)`, so that a
    run is reproducible (also after `BackupAndRestore` resumes it, and
    inside XLA) and each step and replica draws new directions.
    """
    context = tf.distribute.get_replica_context()
    replica = 0 if context is None else context.replica_id_in_sync_group
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    counter = tf.cast(step, tf.int64) * replicas + tf.cast(replica, tf.int64)
    seeds = tf.stack([tf.constant(seed, tf.int64), counter])
    v = tf.random.stateless_normal(shape, seed=seeds, dtype=dtype)
    return v / tf.norm(v, axis=-1, keepdims=True)


def jacobian_target(
    outputs,
    source,
    *,
    method,
    num_projections,
    per_example,
    seed,
    step,
    model_name,
):
    """What to differentiate with respect to `source`; call it on the tape.

    Returns a dict: `target` (the flattened outputs `[batch, K]` for
    `"exact"`; their projections `[batch, n]`, or `[n]` with
    `per_example=False`, for `"projection"`), `rows` (the number of
    vector-Jacobian products needed), `scale` (the estimator's factor),
    `batch_size` and `jit` (whether this runs in an XLA cluster).
    """
    flat = tf.nest.flatten(outputs)
    for t in flat:
        if not isinstance(t, tf.Tensor) or not is_float(t.dtype):
            raise ValueError(
                "JacobianRegularizer needs the outputs of model "
                f"{model_name!r} to be dense floating-point tensors; "
                f"received {describe(t)}."
            )
    batch_size = tf.shape(source)[0]
    sizes = [t.shape[1:].num_elements() for t in flat]
    if None in sizes:
        raise ValueError(
            "JacobianRegularizer needs outputs of a static size per "
            f"example; model {model_name!r} returned shapes "
            f"{[t.shape for t in flat]}."
        )
    dtype = compute_dtype(source.dtype)
    y = tf.concat(
        [
            tf.reshape(tf.cast(t, dtype), [-1, size])
            for t, size in zip(flat, sizes)
        ],
        axis=1,
    )
    num_outputs = sum(sizes)
    jit = in_xla_context()
    result = {"batch_size": batch_size, "jit": jit}
    if method == "exact":
        if jit and not per_example:
            raise ValueError(
                "`method='exact'` with `per_example=False` is not "
                "supported in an XLA-compiled train step. Use "
                "`method='projection'`, `per_example=True`, or compile "
                "the model with `jit_compile=False`."
            )
        if num_outputs > WARN_EXACT_OUTPUTS:
            warnings.warn(
                "JacobianRegularizer(method='exact') costs about one "
                f"backward pass per output; model {model_name!r} has "
                f"{num_outputs} outputs per example (with 1000 outputs a "
                "step cost ~200 plain steps in our benchmark). "
                "`method='projection'` costs one backward pass per "
                "projection.",
                stacklevel=2,
            )
        result.update(target=y, scale=1.0, rows=num_outputs)
        return result
    n = num_projections
    # Unit vectors, uniform on the sphere: E[v v^T] = I / dim, so that
    # dim * E[||v^T J||^2] = ||J||_F^2 (Hoffman et al., 2019).
    if per_example:
        v = random_directions([batch_size, n, num_outputs], dtype, seed, step)
        z = tf.einsum("bnk,bk->bn", v, y)
        scale = float(num_outputs) / n
    else:
        size = batch_size * num_outputs
        v = random_directions([n, size], dtype, seed, step)
        z = tf.linalg.matvec(v, tf.reshape(y, [-1]))
        scale = tf.cast(size, dtype) / n
    result.update(target=z, scale=scale, rows=n)
    return result


def _sum_of_squares(g, batch_size, per_example):
    """Per-example (`[batch]`) or total sum of squares of a gradient."""
    if g is None:
        raise ValueError(
            "JacobianRegularizer: the model's outputs do not depend on the "
            "tensor the Jacobian is taken with respect to (the input, or "
            "the output of the `wrt` layer)."
        )
    g = to_float32(g)
    if per_example:
        return tf.reduce_sum(tf.square(tf.reshape(g, [batch_size, -1])), 1)
    return tf.reduce_sum(tf.square(g))


def squared_norms(tape, source, target, *, method, per_example):
    """The (estimated) squared Frobenius norms of the Jacobian.

    Returns a `[batch]` vector of per-example norms with `per_example=True`;
    with `per_example=False`, a `[1]` vector holding the norm of the whole
    batch's Jacobian divided by the batch size. `target` is the dict of
    `jacobian_target`, recorded on `tape` as a function of `source`.
    """
    rows = target["rows"]
    y = target["target"]
    batch_size = target["batch_size"]
    full = method == "exact" and not per_example

    def vjp_sum_of_squares(i):
        if per_example:
            seed = tf.one_hot(tf.fill(tf.shape(y)[:1], i), rows, dtype=y.dtype)
        else:
            seed = tf.one_hot(i, rows, dtype=y.dtype)
        g = tape.gradient(y, source, output_gradients=seed)
        return _sum_of_squares(g, batch_size, per_example)

    if not full and rows == 1:
        total = vjp_sum_of_squares(0)
    elif not full and target["jit"]:
        # One vector-Jacobian product per row, in a loop. In an XLA cluster
        # this replaces pfor, whose second-order gradients make XLA take the
        # weights as compile-time constants (a recompile every step). A
        # `while_loop` compiles in constant time whatever the number of rows
        # (an unrolled loop took ~47 s to compile for 128 outputs).
        shape = tf.reshape(batch_size, [1]) if per_example else []
        _, total = tf.while_loop(
            lambda i, acc: i < rows,
            lambda i, acc: (i + 1, acc + vjp_sum_of_squares(i)),
            (tf.constant(0), tf.zeros(shape, y.dtype)),
            maximum_iterations=rows,
        )
    elif per_example:
        jacobian = tape.batch_jacobian(y, source)
        total = _sum_of_squares(jacobian, batch_size, per_example)
    else:
        total = _sum_of_squares(tape.jacobian(y, source), batch_size, False)
    total = tf.cast(target["scale"], total.dtype) * total
    if per_example:
        return total
    return tf.reshape(total / tf.cast(batch_size, total.dtype), [1])
