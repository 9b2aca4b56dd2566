"""Fused vs op-by-op research activations (issue #8).

For the talk's activation `x*sigmoid(x) + 0.1*log1p(exp(-|x|)) - tanh(x)**2`
and two library ones (GELU-tanh, Mish), at 4096x1024 and 256x256, times:

- forward: eager op by op, `tf.function` (no XLA), and the fused activation
  called eagerly;
- forward+backward (value and gradient under a `GradientTape`): eager op by
  op, `tf.function`, the fused activation called eagerly, and the fused
  activation inside a `tf.function` (how `fit` runs it);

then one training step (`train_on_batch`) of a 3x512 MLP with
`jit_compile=False` (Keras's CPU default), fused vs the same function op by
op.

Run from the repository root:

    python -m benchmarks.activation_benchmark            # full
    python -m benchmarks.activation_benchmark --quick    # a smoke run
    python -m benchmarks.activation_benchmark --threads 1

Timings never assert; copy the printed tables into benchmarks/RESULTS.md.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402
from benchmarks._harness import compare, print_config  # noqa: E402

# The benchmark's own tf.functions share code objects; silence TF's
# retracing chatter about them.
tf.get_logger().setLevel("ERROR")

ACTIVATIONS = {
    "talk (silu_softplus_tanh_squared)": (
        keras_research.activations.silu_softplus_tanh_squared
    ),
    "gelu_tanh": keras_research.activations.gelu_tanh,
    "mish": keras_research.activations.mish,
}


def _keras_gelu_tanh(x):
    return keras.activations.gelu(x, approximate=True)


# What a user would otherwise call: Keras's own op-by-op versions.
KERAS_BUILTINS = {
    "gelu_tanh": _keras_gelu_tanh,
    "mish": keras.activations.mish,
}


def cpu_time_compare(candidates, *, baseline, warmup, repeats, title):
    """`compare`'s interleaving, timed in process CPU seconds.

    On a shared machine, wall-clock time includes the time other processes
    hold the cores; the CPU time this process spends does not. Use with
    `--threads 1`, where CPU time equals the kernel time of one core.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            _sync(fn())
    names = list(candidates)
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.process_time()
            _sync(candidates[name]())
            samples[name].append(time.process_time() - start)
    medians = {n: statistics.median(v) for n, v in samples.items()}
    print(f"## {title} (process CPU time)")
    width = max(len(n) for n in names)
    for name in names:
        print(
            f"{name:<{width}}  median {medians[name] * 1e3:9.3f} ms CPU  "
            f"{medians[baseline] / medians[name]:6.2f}x vs {baseline}"
        )
    return medians


def _sync(value):
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if hasattr(v, "numpy"):
            v.numpy()


_COMPARE = [compare]


def _value_and_grad(fn):
    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y, tape.gradient(y, x)

    return run


def bench_activation(name, activation, shape, warmup, repeats):
    x = tf.random.normal(shape, seed=1)
    unfused = activation.function
    builtin = KERAS_BUILTINS.get(name)
    forward = {
        "eager": lambda: unfused(x),
        "tf.function": (lambda f: lambda: f(x))(tf.function(unfused)),
        "fused": lambda: activation(x),
    }
    if builtin is not None:
        forward["keras builtin, tf.function"] = (lambda f: lambda: f(x))(
            tf.function(builtin)
        )
    fwd = _COMPARE[0](
        forward,
        baseline="tf.function",
        warmup=warmup,
        repeats=repeats,
        title=f"{name} {shape[0]}x{shape[1]} forward",
    )
    backward = {
        "eager": (lambda f: lambda: f(x))(_value_and_grad(unfused)),
        "tf.function": (lambda f: lambda: f(x))(
            tf.function(_value_and_grad(unfused))
        ),
        "fused": (lambda f: lambda: f(x))(_value_and_grad(activation)),
        "fused in tf.function": (lambda f: lambda: f(x))(
            tf.function(_value_and_grad(activation))
        ),
    }
    if builtin is not None:
        backward["keras builtin, tf.function"] = (lambda f: lambda: f(x))(
            tf.function(_value_and_grad(builtin))
        )
    bwd = _COMPARE[0](
        backward,
        baseline="tf.function",
        warmup=warmup,
        repeats=repeats,
        title=f"{name} {shape[0]}x{shape[1]} forward+backward",
    )
    return fwd, bwd


def _mlp(activation, width, depth, features):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((features,))]
    layers += [
        keras.layers.Dense(width, activation=activation) for _ in range(depth)
    ]
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    return model


def bench_mlp(activation, batch, width, depth, warmup, repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, width)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    fused_model = _mlp(activation, width, depth, width)
    unfused_model = _mlp(
        KERAS_BUILTINS.get(activation.__name__, activation.function),
        width,
        depth,
        width,
    )
    return _COMPARE[0](
        {
            # Keras's built-in where there is one, else `.function`.
            "op by op": lambda: unfused_model.train_on_batch(x, y),
            "fused": lambda: fused_model.train_on_batch(x, y),
        },
        baseline="op by op",
        warmup=warmup,
        repeats=repeats,
        title=(
            f"{depth}x{width} MLP train_on_batch, batch {batch}, "
            f"{activation.__name__}, jit_compile=False"
        ),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, few repeats"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads for TensorFlow and XLA (0: TensorFlow's "
        "default). 1 makes both sides less sensitive to a loaded machine.",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time in process CPU seconds instead of wall-clock (for a "
        "loaded machine; combine with --threads 1)",
    )
    args = parser.parse_args(argv)
    if args.cpu_time:
        _COMPARE[0] = cpu_time_compare
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.quick:
        shapes, warmup, repeats = [(256, 64)], 1, 3
        batches = [64]
    else:
        shapes, warmup, repeats = [(4096, 1024), (256, 256)], 3, 15
        batches = [256, 1024]
    print_config(
        {
            "activation shapes": shapes,
            "dtype": "float32",
            "MLP": "3 x Dense(512), Adam, MSE",
            "MLP batches": batches,
            "repeats": f"{repeats} interleaved rounds after {warmup} warm-up",
            "timer": "process CPU time" if args.cpu_time else "wall clock",
        }
    )
    summary = []
    for shape in shapes:
        for name, activation in ACTIVATIONS.items():
            fwd, bwd = bench_activation(
                name, activation, shape, warmup, repeats
            )
            base = "keras builtin, tf.function"
            summary.append(
                (
                    f"{name} {shape[0]}x{shape[1]}",
                    fwd["tf.function"] / fwd["fused"],
                    bwd["tf.function"] / bwd["fused in tf.function"],
                    bwd[base] / bwd["fused in tf.function"]
                    if base in bwd
                    else None,
                )
            )
    mlp = []
    for batch in batches:
        for name in ("talk (silu_softplus_tanh_squared)", "gelu_tanh"):
            r = bench_mlp(ACTIVATIONS[name], batch, 512, 3, warmup, repeats)
            mlp.append((f"{name}, batch {batch}", r["op by op"] / r["fused"]))
    print("## summary (speed-up of fused over tf.function / op by op)")
    for label, f, b, k in summary:
        extra = f"  (vs keras builtin {k:5.2f}x)" if k else ""
        print(
            f"{label:<45} forward {f:5.2f}x  forward+backward {b:5.2f}x" + extra
        )
    for label, s in mlp:
        print(f"MLP step {label:<36} {s:5.2f}x")


if __name__ == "__main__":
    main()
