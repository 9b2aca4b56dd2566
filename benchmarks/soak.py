"""Soak test: a long `fit` over ragged batches with every component.

    python benchmarks/soak.py                 # 10,000 steps (the report)
    python benchmarks/soak.py --steps 300     # a quick look

One `fit` of `--steps` steps of a text classifier that uses the package's
components together: `RaggedEmbeddingBag` (mean) over ragged id batches
whose bag lengths vary from batch to batch (and whose batches vary in
size), `FactorizedDense` with a fused activation, a `Dense` layer built
under `factorized_scope`, a `mish` layer, keras_research `Adam` (or
`--optimizer`), and `JacobianRegularizer` taken with respect to the
embedding's output.

It reports
- how many times the model was traced into a graph (an identity layer
  counts the Python executions of its `call` outside eager mode): a train
  function that retraces on every new bag length or batch size would show
  here as thousands of traces and a growing memory;
- resident memory (RSS, from /proc/self/statm) every `--log-every` steps,
  and the least-squares slope after `--warmup-steps`, in MB per 1,000
  steps (goal: < 1).

It prints one JSON line with everything (and the configuration). Timings
and memory are for information: nothing is asserted here. The default
test suite runs a short version (tests/reliability/test_soak.py).
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402

VOCAB = 5000
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb():
    """Resident set size of this process in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


class TraceCounter(keras.layers.Layer):
    """Identity layer counting how often its `call` is traced."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.traces = 0

    def call(self, inputs):
        if not tf.executing_eagerly():
            self.traces += 1
        return inputs


@keras_research.activations.fused
def _fused_gelu_tanh(x):
    return keras_research.activations.gelu_tanh(x)


def build_model(optimizer="adam", seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True,
                         name="ids")
    x = keras_research.layers.RaggedEmbeddingBag(
        VOCAB, 32, "mean", name="embedding"
    )(inputs)
    counter = TraceCounter(name="trace_counter")
    x = counter(x)
    x = keras_research.layers.FactorizedDense(
        64, rank=8, activation=_fused_gelu_tanh, name="factorized"
    )(x)
    with keras_research.factorized_scope(rank=8, min_size=0):
        x = keras.layers.Dense(
            64, activation=keras_research.activations.mish, name="scoped"
        )(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, outputs)
    opt = {
        "adam": keras_research.optimizers.Adam,
        "adan": keras_research.optimizers.Adan,
        "power_momentum": keras_research.optimizers.PowerMomentum,
    }[optimizer](1e-3)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, counter


def ragged_dataset(batch_size, pool=200, seed=0, max_len=64):
    """Endless ragged batches: bag lengths in [0, max_len], sizes vary.

    A pool of `pool` batches is generated once (so the input pipeline does
    not dominate); every 7th batch is smaller (`batch_size // 2 + 1`), and
    each pass over the pool is reshuffled.
    """
    rng = np.random.default_rng(seed)
    sizes = [batch_size // 2 + 1 if i % 7 == 6 else batch_size
             for i in range(pool)]
    lengths = rng.integers(0, max_len + 1, size=sum(sizes))
    values = rng.integers(0, VOCAB, size=int(lengths.sum()))
    rows = np.repeat(np.arange(len(lengths)), lengths)
    sums = np.bincount(rows, weights=values, minlength=len(lengths))
    labels = (sums.astype("int64") % 4).astype("int32")
    ids = tf.RaggedTensor.from_row_lengths(values, lengths)
    starts = np.cumsum([0] + sizes)
    batches = [(ids[a:b], labels[a:b]) for a, b in zip(starts, starts[1:])]
    spec = (
        tf.RaggedTensorSpec([None, None], tf.int64, 1, tf.int64),
        tf.TensorSpec([None], tf.int32),
    )

    def gen():
        order = np.random.default_rng(seed + 1)
        while True:
            for i in order.permutation(len(batches)):
                yield batches[i]

    return tf.data.Dataset.from_generator(gen, output_signature=spec)


class _Monitor(keras.callbacks.Callback):
    def __init__(self, every, counter):
        super().__init__()
        self.every = every
        self.counter = counter
        self.samples = []  # (step, rss_mb, seconds, traces so far)
        self.t0 = None

    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()
        self.samples.append((0, rss_mb(), 0.0, self.counter.traces))

    def on_train_batch_end(self, batch, logs=None):
        step = batch + 1
        if step % self.every == 0:
            self.samples.append((
                step, rss_mb(), time.perf_counter() - self.t0,
                self.counter.traces,
            ))


def slope_mb_per_1000(samples, warmup_steps):
    pts = [(s, r) for s, r, _, _ in samples if s >= warmup_steps]
    if len(pts) < 3:
        return float("nan")
    steps, rss = np.array(pts, dtype="float64").T
    return float(np.polyfit(steps, rss, 1)[0] * 1000)


def run(steps=10_000, batch_size=64, log_every=250, warmup_steps=1000,
        optimizer="adam", seed=0, jacobian_weight=0.01, verbose=0):
    """Runs the soak `fit`; returns a dict of the measurements."""
    model, counter = build_model(optimizer, seed)
    traces_at_build = counter.traces
    data = ragged_dataset(batch_size, seed=seed)
    monitor = _Monitor(log_every, counter)
    regularizer = keras_research.callbacks.JacobianRegularizer(
        jacobian_weight, wrt="embedding"
    )
    history = model.fit(
        data, epochs=1, steps_per_epoch=steps, verbose=verbose,
        callbacks=[regularizer, monitor],
    )
    samples = monitor.samples
    warm = min(warmup_steps, steps // 2)
    fit_s = samples[-1][2] if samples else float("nan")
    return {
        "steps": steps,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "traces": counter.traces,
        "traces_at_build": traces_at_build,
        "traces_after_first_sample": samples[min(1, len(samples) - 1)][3],
        "rss_start_mb": samples[0][1],
        "rss_after_warmup_mb": next(
            (r for s, r, _, _ in samples if s >= warm), samples[-1][1]),
        "rss_end_mb": samples[-1][1],
        "rss_slope_mb_per_1000_steps": slope_mb_per_1000(samples, warm),
        "warmup_steps": warm,
        "seconds": fit_s,
        "steps_per_second": samples[-1][0] / fit_s if fit_s else None,
        "final_loss": float(history.history["loss"][-1]),
        "jacobian_norm": float(history.history["jacobian_norm"][-1]),
        "samples": samples,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--warmup-steps", type=int, default=1000)
    parser.add_argument("--optimizer", default="adam",
                        choices=("adam", "adan", "power_momentum"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        from benchmarks._harness import print_config

        print_config({"benchmark": "soak", **vars(args)})
    except ImportError:  # run from another directory
        print(f"TF {tf.__version__}, Keras {keras.__version__}, {vars(args)}")
    result = run(args.steps, args.batch_size, args.log_every,
                 args.warmup_steps, args.optimizer, args.seed, verbose=0)
    print(json.dumps(result))
    print(
        f"\n{result['steps']} steps in {result['seconds']:.0f} s "
        f"({result['steps_per_second']:.1f} steps/s); traces: "
        f"{result['traces']}; RSS {result['rss_start_mb']:.0f} MB at "
        f"start, {result['rss_after_warmup_mb']:.0f} MB after "
        f"{result['warmup_steps']} steps, {result['rss_end_mb']:.0f} MB at "
        f"the end; slope after warm-up "
        f"{result['rss_slope_mb_per_1000_steps']:+.3f} MB / 1000 steps"
    )


if __name__ == "__main__":
    main()
