"""Jacobians by loop vs pfor, and the cost of `JacobianRegularizer` in `fit`.

Part 1 (the talk's comparison): the per-example Jacobian of a small tanh
MLP on a 64x64 batch (64 examples, 64 inputs, 64 outputs) by a Python loop
of `tape.gradient` (eager and in `tf.function`), by `tf.vectorized_map`
over the output seeds, and by `tape.batch_jacobian` / `tape.jacobian`.

Part 2: the time of one training step of `fit` with the callback (exact,
1 and 4 projections) against a plain step and against hand-written train
steps computing the same penalty with nested tapes ("bare"), for MLPs with
10 and 1000 outputs, with and without `jit_compile`. The callback's steps
run through `model.train_function`, exactly as in `fit`.

Part 3 (issue 16's check of the default): keras-io's `mnist_convnet`
(28x28x1 -> Conv 32 -> pool -> Conv 64 -> pool -> dropout -> Dense 10
softmax, Adam, batch 128): a plain `fit` step against the callback's
default (one random projection), 4 projections and `method="exact"`,
interleaved, with the median, the minimum and the ratio to a plain step.

Run: `python -m benchmarks.jacobian_benchmark [--quick] [--part P]` with
P in `all` (default), `loops`, `mlp`, `convnet`. Issue 16's check of the
default, a few minutes: `python -m benchmarks.jacobian_benchmark --quick
--part convnet` (4 min at load average 12 on 2 cores). `--quick` alone runs
all parts (16 min at load average 12, mostly XLA compilations).
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._harness import compare, print_config  # noqa: E402
from keras_research.callbacks import JacobianRegularizer  # noqa: E402

# ---------------------------------------------------------------------------
# Part 1.


def jacobian_methods(batch=64, width=64):
    rng = np.random.default_rng(0)
    w1 = tf.constant(rng.normal(size=(width, width)) / 8, tf.float32)
    w2 = tf.constant(rng.normal(size=(width, width)) / 8, tf.float32)
    x = tf.constant(rng.normal(size=(batch, width)), tf.float32)

    def f(v):
        return tf.tanh(v @ w1) @ w2

    def loop(v):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            y = f(v)
            columns = [y[:, k] for k in range(width)]
        return tf.stack([tape.gradient(c, v) for c in columns], axis=1)

    def vmap(v):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(v)
            y = f(v)
        seeds = tf.eye(width, batch_shape=[1])[0][:, None, :]
        seeds = tf.broadcast_to(seeds, [width, batch, width])
        rows = tf.vectorized_map(
            lambda s: tape.gradient(y, v, output_gradients=s), seeds
        )
        return tf.transpose(rows, [1, 0, 2])

    def batch_jacobian(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = f(v)
        return tape.batch_jacobian(y, v)

    def jacobian(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = f(v)
        full = tape.jacobian(y, v)  # [b, k, c, d]: all cross-example blocks.
        diagonal = tf.linalg.diag_part(tf.transpose(full, [1, 3, 0, 2]))
        return tf.transpose(diagonal, [2, 0, 1])

    graph_loop = tf.function(loop)
    graph_vmap = tf.function(vmap)
    graph_bj = tf.function(batch_jacobian)
    graph_jac = tf.function(jacobian)
    reference = loop(x).numpy()
    for fn in (graph_loop, graph_vmap, graph_bj, graph_jac):
        np.testing.assert_allclose(fn(x).numpy(), reference, atol=1e-5)
    compare(
        {
            "loop of tape.gradient, eager": lambda: loop(x),
            "loop of tape.gradient, tf.function": lambda: graph_loop(x),
            "tf.vectorized_map, tf.function": lambda: graph_vmap(x),
            "tape.batch_jacobian, tf.function": lambda: graph_bj(x),
            "tape.jacobian (full), tf.function": lambda: graph_jac(x),
            "tape.batch_jacobian, eager": lambda: batch_jacobian(x),
        },
        warmup=2,
        repeats=7,
        title=f"Part 1: per-example Jacobian, batch {batch}, {width} inputs "
        f"and outputs, tanh MLP",
    )


# ---------------------------------------------------------------------------
# Part 2.


def make_mlp(num_outputs, jit, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((32,)),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(64, activation="tanh"),
            keras.layers.Dense(num_outputs),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    return model


def make_data(num_outputs, batch=64, n=64 * 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 32)).astype("float32")
    y = rng.integers(0, num_outputs, n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).repeat()


def callback_step(model, callback, dataset):
    """One `fit` step of `model` with `callback` active: the hooks and the
    `train_function` call that `fit` makes for each batch."""
    model.make_train_function()
    iterator = iter(dataset)
    if callback is None:
        return lambda: model.train_function(iterator)
    callback.set_model(model)
    callback.on_train_begin()
    callback.on_epoch_begin(0)

    def step():
        callback.on_train_batch_begin(0)
        return model.train_function(iterator)

    return step


def bare_step(model, method, num_projections, jit, dataset, weight=0.01):
    """The same penalty written by hand: nested tapes in one tf.function."""
    loss_fn = model.loss
    optimizer = model.optimizer
    weights = model.trainable_weights
    k = model.outputs[0].shape[-1]

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                inner.watch(x)
                logits = model(x, training=True)
                if method == "projection":
                    v = tf.random.normal([tf.shape(x)[0], num_projections, k])
                    v = v / tf.norm(v, axis=-1, keepdims=True)
                    z = tf.einsum("bnk,bk->bn", v, logits)
            if method == "exact":
                jac = inner.batch_jacobian(logits, x)
                norm = tf.reduce_mean(tf.reduce_sum(tf.square(jac), [1, 2]))
            elif num_projections == 1:
                g = inner.gradient(z, x)
                norm = k * tf.reduce_mean(tf.reduce_sum(tf.square(g), 1))
            else:
                jac = inner.batch_jacobian(z, x)
                norm = (k / num_projections) * tf.reduce_mean(
                    tf.reduce_sum(tf.square(jac), [1, 2])
                )
            loss = loss_fn(y, logits) + weight * norm
        grads = outer.gradient(loss, weights)
        optimizer.apply_gradients(zip(grads, weights))
        return loss

    iterator = iter(dataset)
    return lambda: step(*next(iterator))


def bare_plain_step(model, jit, dataset):
    """A hand-written train step without the penalty, the bare baseline."""
    loss_fn = model.loss
    optimizer = model.optimizer
    weights = model.trainable_weights

    @tf.function(jit_compile=jit)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, weights)
        optimizer.apply_gradients(zip(grads, weights))
        return loss

    iterator = iter(dataset)
    return lambda: step(*next(iterator))


def first_call_seconds(fn, calls=1):
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
        if isinstance(out, dict):
            next(iter(out.values())).numpy()
        else:
            out.numpy()
    return (time.perf_counter() - start) / calls


def train_steps(num_outputs, jit, repeats):
    dataset = make_data(num_outputs)
    configs = [
        ("exact", "exact", 1),
        ("projection x1", "projection", 1),
        ("projection x4", "projection", 4),
    ]
    if jit and num_outputs > 128:
        # Exact under XLA runs 1000 products one after another: not timed.
        configs = configs[1:]
    candidates = {
        "plain": callback_step(make_mlp(num_outputs, jit), None, dataset),
        "bare plain": bare_plain_step(make_mlp(num_outputs, jit), jit, dataset),
    }
    compile_times = {}
    for label, method, n in configs:
        cb = JacobianRegularizer(0.01, method=method, num_projections=n)
        fn = callback_step(make_mlp(num_outputs, jit), cb, dataset)
        compile_times[f"callback {label}"] = first_call_seconds(fn)
        candidates[f"callback {label}"] = fn
        if not jit or method == "projection" and n == 1:
            bare = bare_step(
                make_mlp(num_outputs, jit), method, n, jit, dataset
            )
            compile_times[f"bare {label}"] = first_call_seconds(bare)
            candidates[f"bare {label}"] = bare
    medians = compare(
        candidates,
        baseline="plain",
        warmup=3,
        repeats=repeats,
        title=f"Part 2: train step, MLP 32-64-64-{num_outputs} tanh, batch "
        f"64, jit_compile={jit}",
    )
    print(
        "   cost relative to a plain step: callback / plain (Keras fit "
        "step), bare / bare plain (hand-written step):"
    )
    for name, value in medians.items():
        base = medians["bare plain" if name.startswith("bare") else "plain"]
        print(f"     {name:<24} {value / base:6.2f}x")
    print(
        "   first call (trace + compile) in s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in compile_times.items())
    )
    return medians


def xla_cliff(num_outputs=10):
    """The cliff avoided by the callback: pfor `batch_jacobian` in an XLA
    step makes XLA take the weights as constants and recompile each step."""
    dataset = make_data(num_outputs)
    bare = bare_step(make_mlp(num_outputs, True), "exact", 1, True, dataset)
    times = [first_call_seconds(bare) for _ in range(3)]
    print(
        "## bare exact batch_jacobian (pfor) inside an XLA-compiled step, "
        f"{num_outputs} outputs: steps took "
        + ", ".join(f"{t:.2f} s" for t in times)
    )


# ---------------------------------------------------------------------------
# Part 3.


def make_convnet(seed=0):
    """keras-io `mnist_convnet`, as written there."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"]
    )
    return model


def interleaved(candidates, warmup, repeats):
    """`{name: sorted step times}`, candidates run in rotated order."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            first_call_seconds(candidates[name])
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            samples[name].append(first_call_seconds(candidates[name]))
    return {name: sorted(times) for name, times in samples.items()}


def convnet(repeats):
    batch = 128
    rng = np.random.default_rng(0)
    x = rng.random((batch * 8, 28, 28, 1), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 10, batch * 8), 10)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    dataset = dataset.repeat().prefetch(2)
    configs = {
        "plain fit step": None,
        "default (1 projection)": {},
        "4 projections": {"num_projections": 4},
        'method="exact"': {"method": "exact"},
    }
    candidates, first = {}, {}
    for name, kwargs in configs.items():
        callback = None if kwargs is None else JacobianRegularizer(**kwargs)
        candidates[name] = callback_step(make_convnet(), callback, dataset)
        first[name] = first_call_seconds(candidates[name])
    samples = interleaved(candidates, warmup=2, repeats=repeats)
    median = {n: float(np.median(s)) for n, s in samples.items()}
    base = "plain fit step"
    print(
        f"## Part 3: keras-io mnist_convnet (10 outputs), batch {batch}, "
        f"Adam, {repeats} interleaved rounds after 2 warm-up steps"
    )
    print(
        f"   {'':<24} {'median ms':>10} {'min ms':>8} {'median ratio':>13} "
        f"{'min ratio':>10} {'first call s':>13}"
    )
    for name, times in samples.items():
        print(
            f"   {name:<24} {median[name] * 1e3:10.1f} {times[0] * 1e3:8.1f} "
            f"{median[name] / median[base]:12.2f}x "
            f"{times[0] / samples[base][0]:9.2f}x {first[name]:13.2f}"
        )
    return median


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--part", choices=["all", "loops", "mlp", "convnet"], default="all"
    )
    args = parser.parse_args()
    repeats = 7 if args.quick else 25
    print_config(
        {
            "models": "MLP 32-64-64-{10,1000} tanh, batch 64, SGD; keras-io "
            "mnist_convnet, batch 128, Adam",
            "load average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        }
    )
    start = time.perf_counter()
    if args.part in ("all", "convnet"):
        convnet(repeats)
    if args.part in ("all", "loops"):
        jacobian_methods()
    if args.part in ("all", "mlp"):
        for num_outputs in (10, 1000):
            for jit in (False, True):
                train_steps(num_outputs, jit, repeats)
        xla_cliff()
    print(
        f"# total {time.perf_counter() - start:.0f} s, load average after: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )


if __name__ == "__main__":
    main()
