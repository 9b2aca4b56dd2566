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

Run: `python -m benchmarks.jacobian_benchmark [--quick]`.
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
    """One `fit` step of `model` with `callback` active (the same
    `train_function` that `fit` calls)."""
    if callback is None:
        model.make_train_function()
    else:
        callback.set_model(model)
        callback.on_train_begin()
        callback.on_epoch_begin(0)
    iterator = iter(dataset)
    return lambda: model.train_function(iterator)


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 7 if args.quick else 25
    print_config({"models": "MLP 32-64-64-{10,1000} tanh, batch 64, SGD"})
    jacobian_methods()
    for num_outputs in (10, 1000):
        for jit in (False, True):
            train_steps(num_outputs, jit, repeats)
    xla_cliff()


if __name__ == "__main__":
    main()
