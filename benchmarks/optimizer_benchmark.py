"""Benchmark: the XLA-fused `keras_research.optimizers.Adam` vs the rest.

Compares, in one process, interleaved, after warm-up, with fixed
gradients, the in-graph cost of one Adam step (`optimizer.apply` inside a
`tf.function`, variables captured):

- `keras.optimizers.Adam` (op by op, as `fit` runs it on CPU),
- `keras_research.optimizers.Adam` forced to one XLA call for all variables
  (in `fit` the template compiles only variables of 2**20 elements or more:
  see `benchmarks/optimizer_fit_benchmark.py`),
- the same template with `jit_compile=False` (the same rule, op by op),
- a loop of `tf.raw_ops.ResourceApplyAdam` (TensorFlow's hand-fused kernel),

on (a) a 20-layer, 512-unit MLP (40 variables, 5.3 M parameters) and (b) 240
small variables (120 32x32 kernels and 120 biases). Then the whole `fit`
step with each optimizer, of the MLP and of a 120-layer, 32-unit MLP (the
same 240 small variables), and the achieved memory bandwidth of
the update (Adam reads variable, gradient, m and v and writes variable, m
and v: 7 x 4 bytes per float32 parameter) next to a NumPy copy's bandwidth
measured in the same run.

Run: `python benchmarks/optimizer_benchmark.py` (add `--smoke` for a
seconds-long run with small sizes). It prints medians and ratios; it never
asserts timings.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402
from benchmarks._harness import compare, print_config  # noqa: E402


class RawAdam:
    """Adam through `tf.raw_ops.ResourceApplyAdam`, one kernel a variable."""

    def __init__(
        self,
        variables,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
    ):
        self.lr, self.b1, self.b2, self.eps = (
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
        )
        self.iterations = tf.Variable(0, dtype=tf.int64)
        self.slots = [
            (tf.Variable(tf.zeros(v.shape)), tf.Variable(tf.zeros(v.shape)))
            for v in variables
        ]

    def apply(self, grads, variables):
        t = tf.cast(self.iterations + 1, tf.float32)
        b1_power, b2_power = tf.pow(self.b1, t), tf.pow(self.b2, t)
        for g, v, (m, u) in zip(grads, variables, self.slots):
            tf.raw_ops.ResourceApplyAdam(
                var=v.value.handle,
                m=m.handle,
                v=u.handle,
                beta1_power=b1_power,
                beta2_power=b2_power,
                lr=self.lr,
                beta1=self.b1,
                beta2=self.b2,
                epsilon=self.eps,
                grad=g,
            )
        self.iterations.assign_add(1)


def _all_compiled(optimizer):
    """Compiles every variable's update (the template's threshold is 2**20
    elements in `fit`; here the compiled update itself is measured)."""
    optimizer._op_by_op_below = 0
    optimizer._bucket_elements = 2**62  # One call.
    return optimizer


def _step_fn(optimizer, variables):
    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return step


def bench_update(title, shapes, repeats):
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype("float32") * 0.05 for s in shapes]
    grads = [
        tf.constant(rng.normal(size=s).astype("float32") * 1e-3) for s in shapes
    ]
    params = sum(int(np.prod(s)) for s in shapes)
    makers = {
        "keras.optimizers.Adam": lambda vs: keras.optimizers.Adam(),
        "keras_research Adam (XLA)": lambda vs: _all_compiled(
            keras_research.optimizers.Adam()
        ),
        "template jit_compile=False": (
            lambda vs: keras_research.optimizers.Adam(jit_compile=False)
        ),
        "ResourceApplyAdam loop": lambda vs: RawAdam(vs),
    }
    candidates = {}
    for name, make in makers.items():
        variables = [keras.Variable(w) for w in init]
        step = _step_fn(make(variables), variables)
        candidates[name] = lambda step=step: step(grads)
    print(f"# {title}: {len(shapes)} variables, {params:,} parameters")
    medians = compare(
        candidates,
        baseline="keras.optimizers.Adam",
        warmup=5,
        repeats=repeats,
        title=title,
    )
    ours = medians["keras_research Adam (XLA)"]
    print(
        f"ours vs uncompiled template: "
        f"{medians['template jit_compile=False'] / ours:.2f}x faster; "
        f"ours / hand-fused kernel: "
        f"{ours / medians['ResourceApplyAdam loop']:.2f}x the time"
    )
    return medians, params


def bench_bandwidth(params, medians, repeats):
    src = np.random.default_rng(0).normal(size=params).astype("float32")
    dst = np.empty_like(src)
    copy = compare(
        {"numpy copy": lambda: np.copyto(dst, src)},
        warmup=3,
        repeats=repeats,
        title="NumPy copy",
    )
    copy_gbs = 2 * src.nbytes / copy["numpy copy"] / 1e9
    print(
        f"NumPy copy bandwidth: {copy_gbs:.1f} GB/s "
        f"(read + write of {src.nbytes / 1e6:.0f} MB)"
    )
    adam_bytes = 7 * 4 * params
    for name, seconds in medians.items():
        print(
            f"{name:<28} {adam_bytes / seconds / 1e9:6.1f} GB/s "
            f"({adam_bytes / seconds / 1e9 / copy_gbs:.0%} of NumPy copy)"
        )


def bench_fit(depth, width, batch, repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * 4, width)).astype("float32")
    y = rng.normal(size=(batch * 4, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
    dataset = dataset.cache().repeat()
    makers = {
        "keras.optimizers.Adam": lambda: keras.optimizers.Adam(1e-4),
        "keras_research Adam": lambda: keras_research.optimizers.Adam(1e-4),
        "forced one XLA call": (
            lambda: _all_compiled(keras_research.optimizers.Adam(1e-4))
        ),
        "keras SGD (lower bound)": lambda: keras.optimizers.SGD(1e-4),
    }
    candidates = {}
    for name, make in makers.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((width,))]
            + [
                keras.layers.Dense(width, activation="relu")
                for _ in range(depth)
            ]
            + [keras.layers.Dense(1)]
        )
        model.compile(optimizer=make(), loss="mse")  # jit_compile="auto"
        model.fit(dataset, steps_per_epoch=2, epochs=1, verbose=0)
        # The train step exactly as `fit` runs it, without fit's per-call
        # set-up (callbacks, iterator creation).
        train_function = model.make_train_function()
        iterator = iter(dataset)
        candidates[name] = lambda f=train_function, it=iterator: f(it)
    print(
        f"# fit step: {depth}x{width} MLP, batch {batch}, "
        "model.compile(jit_compile='auto') (resolves to False on CPU); "
        "one call of model.train_function, as fit makes it"
    )
    compare(
        candidates,
        baseline="keras.optimizers.Adam",
        warmup=3,
        repeats=repeats,
        title="fit step",
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes and few repeats (seconds)",
    )
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    depth, width = (2, 64) if args.smoke else (20, 512)
    small = 8 if args.smoke else 120
    repeats = 3 if args.smoke else args.repeats
    print_config(
        {
            "MLP": f"{depth}x{width}",
            "small variables": f"{small} x (32x32) + {small} x (32,)",
            "dtype": "float32",
            "gradients": "fixed, passed as tf.function arguments",
        }
    )
    mlp_shapes = [(width, width), (width,)] * depth
    medians, params = bench_update("(a) MLP update", mlp_shapes, repeats)
    bench_bandwidth(params, medians, repeats)
    bench_update(
        "(b) small variables update", [(32, 32), (32,)] * small, repeats
    )
    bench_fit(depth, width, batch=8 if args.smoke else 256, repeats=repeats)
    bench_fit(small, 32, batch=64, repeats=repeats)


if __name__ == "__main__":
    main()
