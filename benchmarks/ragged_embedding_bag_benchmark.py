"""RaggedEmbeddingBag vs what a Keras user would otherwise write.

Bags of ids (1024 bags, lognormal lengths, vocabulary 50k, dimension 64),
forward + backward with respect to the table. Candidates:

- `bare`: `tf.gather` over the flat ids + a sorted segment op
  (`tf.math.segment_mean` etc.): what the layer does without its checks,
  but with a table gradient of one row per id *occurrence* (the layer's
  has one row per distinct id);
- `RaggedEmbeddingBag`: the layer on the `tf.RaggedTensor`;
- `padded Embedding+GAP`: `keras.layers.Embedding(mask_zero=True)` +
  `GlobalAveragePooling1D` on the ids padded to the longest bag;
- `safe_embedding_lookup_sparse`: `tf.nn.safe_embedding_lookup_sparse` on a
  `tf.SparseTensor`.

Sections:

- `combiners`: every combiner, with and without per-id weights: the layer
  vs bare vs `safe_embedding_lookup_sparse`, for each `--mean-lengths`;
- `time`: "mean", the four candidates, `tf.function`;
- `xla`: the same with `jit_compile=True` (segment_mean and the sparse
  lookup have no XLA kernel: the bare XLA baseline is
  `unsorted_segment_sum`);
- `memory`: peak memory of each candidate, each in its own process, for each
  `--mean-lengths`: RSS high-water mark during 3 steps minus the RSS before
  them (the function is traced beforehand from its input signature);
- `fit`: one `fit` step (`train_on_batch`, Adam) of a bag-of-words
  classifier built with each;
- `paths`: reduction formulations (kept for reference).

The comparison against PyTorch's `nn.EmbeddingBag` is in
`ragged_embedding_bag_torch_benchmark.py`.

Run (the numbers in RESULTS.md, a few minutes on 2 cores):
`python benchmarks/ragged_embedding_bag_benchmark.py --sections combiners
xla memory --mean-lengths 46 183 --repeats 15`.
`--quick` uses smaller sizes (a smoke run). Timings never assert anything.
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks._harness import compare, print_config  # noqa: E402
from keras_research.layers import RaggedEmbeddingBag  # noqa: E402

CANDIDATES = (
    "bare segment_mean",
    "RaggedEmbeddingBag",
    "padded Embedding+GAP",
    "safe_embedding_lookup_sparse",
)


def make_bags(num_bags, mean_len, max_len, vocab, seed=0):
    """Lognormal bag lengths (sigma 1) with the given mean, clipped."""
    rng = np.random.default_rng(seed)
    sigma = 1.0
    mu = np.log(mean_len) - sigma**2 / 2
    lengths = np.clip(
        rng.lognormal(mu, sigma, num_bags).astype(np.int64), 0, max_len
    )
    # Ids 1..vocab-1: 0 is the padding/mask id of the padded baseline.
    values = rng.integers(1, vocab, int(lengths.sum()))
    return tf.RaggedTensor.from_row_lengths(
        tf.constant(values, tf.int64), tf.constant(lengths, tf.int64)
    )


def build_candidates(ids, vocab, dim, jit_compile=False):
    """name -> (tf.function step, its argument, input signature)."""
    probe = tf.constant(
        np.random.default_rng(1).normal(size=(int(ids.nrows()), dim)),
        tf.float32,
    )
    table = tf.Variable(
        tf.random.uniform((vocab, dim), -0.05, 0.05), name="table"
    )
    layer = RaggedEmbeddingBag(vocab, dim, "mean")
    layer.build()
    layer.embeddings.assign(table)
    embedding = keras.layers.Embedding(vocab, dim, mask_zero=True)
    embedding.build((None, None))
    embedding.embeddings.assign(table)
    pooling = keras.layers.GlobalAveragePooling1D()
    steps = {}

    def step(fn, variable):
        def run(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(fn(x) * probe)
            grad = tape.gradient(loss, variable)
            return loss, grad.values

        return tf.function(run, jit_compile=jit_compile, reduce_retracing=True)

    ragged_spec = tf.RaggedTensorSpec([None, None], tf.int64, 1, tf.int64)

    def bare(x):
        vectors = tf.gather(table, x.values)
        if jit_compile:
            # No XLA kernel for segment_mean: sum with the unsorted op.
            segment_ids = tf.cumsum(
                tf.math.unsorted_segment_sum(
                    tf.ones_like(x.row_splits[1:-1]),
                    x.row_splits[1:-1],
                    tf.shape(x.values, out_type=tf.int64)[0] + 1,
                )[:-1]
            )
            total = tf.math.unsorted_segment_sum(
                vectors, segment_ids, x.nrows()
            )
            count = tf.cast(x.row_lengths(), tf.float32)[:, None]
            return tf.math.divide_no_nan(total, count)
        return tf.math.segment_mean(vectors, x.value_rowids())

    steps["bare segment_mean"] = (step(bare, table), ids, ragged_spec)
    steps["RaggedEmbeddingBag"] = (
        step(layer, layer.embeddings.value),
        ids,
        ragged_spec,
    )
    padded = ids.to_tensor()
    steps["padded Embedding+GAP"] = (
        step(
            lambda x: pooling(embedding(x), mask=embedding.compute_mask(x)),
            embedding.embeddings.value,
        ),
        padded,
        tf.TensorSpec([None, None], tf.int64),
    )
    if not jit_compile:
        sparse = ids.to_sparse()
        steps["safe_embedding_lookup_sparse"] = (
            step(
                lambda x: tf.nn.safe_embedding_lookup_sparse(
                    table, x, combiner="mean"
                ),
                table,
            ),
            sparse,
            tf.SparseTensorSpec([None, None], tf.int64),
        )
    return steps


def paths_section(ids, vocab, dim, repeats):
    """The reduction paths the layer chooses between (mean, fwd+bwd)."""
    table = tf.Variable(tf.random.uniform((vocab, dim), -0.05, 0.05))
    probe = tf.random.normal((int(ids.nrows()), dim))

    def step(reduce, jit_compile=False):
        def run(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(reduce(x) * probe)
            return loss, tape.gradient(loss, table).values

        return tf.function(run, jit_compile=jit_compile)

    def scale(total, x):
        count = tf.cast(x.row_lengths(), tf.float32)[:, None]
        return tf.math.divide_no_nan(total, count)

    def cumsum_ids(x):
        starts = x.row_splits[1:-1]
        n = tf.shape(x.values, out_type=tf.int64)[0]
        counts = tf.math.unsorted_segment_sum(
            tf.ones_like(starts), starts, n + 1
        )
        return tf.cumsum(counts[:-1])

    candidates = {
        "segment_sum + scale": step(lambda x: scale(tf.math.segment_sum(
            tf.gather(table, x.values), x.value_rowids()), x)),
        "segment_mean": step(lambda x: tf.math.segment_mean(
            tf.gather(table, x.values), x.value_rowids())),
        "sparse.segment_mean(sparse_gradient=True)": step(
            lambda x: tf.sparse.segment_mean(
                table, x.values, x.value_rowids(), num_segments=x.nrows(),
                sparse_gradient=True)),
        "unique + gather + segment_sum + scale": step(lambda x: scale(
            tf.math.segment_sum(
                tf.gather(tf.gather(table, tf.unique(x.values)[0]),
                          tf.unique(x.values)[1]), x.value_rowids()), x)),
        "unsorted_segment_sum + scale": step(lambda x: scale(
            tf.math.unsorted_segment_sum(tf.gather(table, x.values),
                                         x.value_rowids(), x.nrows()), x)),
        "ragged gather + reduce_mean": step(
            lambda x: tf.reduce_mean(tf.gather(table, x), axis=1)),
        "XLA: unsorted_segment_sum + scale": step(lambda x: scale(
            tf.math.unsorted_segment_sum(tf.gather(table, x.values),
                                         cumsum_ids(x), x.nrows()), x),
            jit_compile=True),
    }
    compare(
        {name: (lambda fn=fn: fn(ids)) for name, fn in candidates.items()},
        baseline="segment_sum + scale",
        warmup=3,
        repeats=repeats,
        title="reduction paths (mean, fwd+bwd)",
    )

    def adam_step(reduce):
        variable = keras.Variable(table.numpy())
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build([variable])

        @tf.function
        def run(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(reduce(variable.value, x) * probe)
            grad = tape.gradient(loss, variable.value)
            optimizer.apply([grad], [variable])
            return loss

        return lambda: run(ids)

    compare(
        {
            "per-id gradient (gather + segment_mean)": adam_step(
                lambda t, x: tf.math.segment_mean(
                    tf.gather(t, x.values), x.value_rowids())),
            "distinct-id gradient (sparse.segment_mean)": adam_step(
                lambda t, x: tf.sparse.segment_mean(
                    t, x.values, x.value_rowids(), num_segments=x.nrows(),
                    sparse_gradient=True)),
        },
        warmup=2,
        repeats=repeats,
        title="the same + a Keras Adam update of the table",
    )


def bare_reduce(table, x, combiner, weights=None):
    """The bare formulation: gather per id + sorted segment op.

    Its table gradient has one row per id occurrence (what the layer
    de-duplicates). Sorted segment ops stop at the last non-empty bag:
    padded to every bag.
    """
    segment_ids = x.value_rowids()
    vectors = tf.gather(table, x.values)
    if weights is not None:
        vectors = vectors * weights.values[:, None]
    if combiner == "max":
        reduced = tf.math.segment_max(vectors, segment_ids)
    elif combiner == "mean" and weights is None:
        reduced = tf.math.segment_mean(vectors, segment_ids)
    else:
        reduced = tf.math.segment_sum(vectors, segment_ids)
    missing = tf.cast(x.nrows(), tf.int32) - tf.shape(reduced)[0]
    reduced = tf.pad(reduced, [[0, missing], [0, 0]])
    if combiner in ("sum", "max") or (combiner == "mean" and weights is None):
        return reduced
    w = (tf.ones_like(x.values, tf.float32) if weights is None
         else weights.values)
    if combiner == "sqrtn":
        w = w * w
    divisor = tf.math.unsorted_segment_sum(w, segment_ids, x.nrows())
    if combiner == "sqrtn":
        divisor = tf.sqrt(divisor)
    return tf.math.divide_no_nan(reduced, divisor[:, None])


def combiners_section(args, vocab, dim, max_len):
    """Every combiner, with and without weights: layer vs bare vs TF op."""
    table = tf.Variable(tf.random.uniform((vocab, dim), -0.05, 0.05))
    results = {}
    for mean_len in args.mean_lengths:
        ids = make_bags(args.bags, mean_len, max_len, vocab)
        weights = ids.with_values(tf.random.stateless_uniform(
            tf.shape(ids.values), (0, 1), 0.5, 1.5))
        sparse_ids, sparse_weights = ids.to_sparse(), weights.to_sparse()
        probe = tf.random.stateless_normal((int(ids.nrows()), dim), (1, 2))
        for combiner in ("sum", "mean", "sqrtn", "max"):
            for weighted in (False, True):
                layer = RaggedEmbeddingBag(vocab, dim, combiner)
                layer.build()
                layer.embeddings.assign(table)

                def step(fn, variable):
                    def run(x, w):
                        with tf.GradientTape() as tape:
                            loss = tf.reduce_sum(fn(x, w) * probe)
                        grad = tape.gradient(loss, variable)
                        return loss, grad.values

                    return tf.function(run)

                w = weights if weighted else None
                sw = sparse_weights if weighted else None
                steps = {
                    "bare": (step(lambda x, w, c=combiner: bare_reduce(
                        table, x, c, w), table), ids, w),
                    "RaggedEmbeddingBag": (step(
                        lambda x, w, layer=layer: layer(x, weights=w),
                        layer.embeddings.value), ids, w),
                }
                if combiner != "max":
                    steps["safe_embedding_lookup_sparse"] = (step(
                        lambda x, w, c=combiner:
                        tf.nn.safe_embedding_lookup_sparse(
                            table, x, w, combiner=c), table),
                        sparse_ids, sw)
                losses = [float(fn(x, w)[0]) for fn, x, w in steps.values()]
                assert np.allclose(losses, losses[0], rtol=1e-4), losses
                label = (f"mean {mean_len} ids, {combiner}"
                         f"{', weighted' if weighted else ''}")
                results[label] = compare(
                    {name: (lambda fn=fn, x=x, w=w: fn(x, w))
                     for name, (fn, x, w) in steps.items()},
                    baseline="bare", warmup=2, repeats=args.repeats,
                    title=f"fwd+bwd, {label}",
                )
    print("## summary: RaggedEmbeddingBag vs bare and vs "
          "safe_embedding_lookup_sparse (median ratios, > 1 = faster)")
    for label, medians in results.items():
        layer = medians["RaggedEmbeddingBag"]
        line = f"{label:<28} vs bare {medians['bare'] / layer:5.2f}x"
        if "safe_embedding_lookup_sparse" in medians:
            safe = medians["safe_embedding_lookup_sparse"]
            line += f"  vs safe_embedding_lookup_sparse {safe / layer:5.2f}x"
        print(line)
    return results


def check_agreement(steps):
    losses = {name: float(fn(x)[0]) for name, (fn, x, _) in steps.items()}
    ref = losses["bare segment_mean"]
    for name, loss in losses.items():
        assert abs(loss - ref) <= 1e-4 * max(1.0, abs(ref)), (name, losses)


def time_section(ids, vocab, dim, jit_compile, repeats):
    steps = build_candidates(ids, vocab, dim, jit_compile=jit_compile)
    check_agreement(steps)
    title = "fwd+bwd, tf.function" + (
        "(jit_compile=True)" if jit_compile else ""
    )
    return compare(
        {
            name: (lambda fn=fn, x=x: fn(x))
            for name, (fn, x, _) in steps.items()
        },
        baseline="bare segment_mean",
        warmup=3,
        repeats=repeats,
        title=title,
    )


def _rss_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def memory_child(name, mean_len, num_bags, vocab, dim, max_len):
    """Runs in a fresh process: prints the step's memory growth as JSON."""
    ids = make_bags(num_bags, mean_len, max_len, vocab)
    fn, x, spec = build_candidates(ids, vocab, dim)[name]
    fn.get_concrete_function(spec)  # Trace without running.
    before = _rss_mb("VmRSS")
    for _ in range(3):
        fn(x)
    peak = _rss_mb("VmHWM")
    print(json.dumps({"delta_mb": peak - before, "rss_before_mb": before}))


def memory_section(args, vocab, dim, max_len):
    print("## peak memory (separate process per cell): +MB over the RSS "
          "before running")
    rows = {}
    for mean_len in args.mean_lengths:
        ids = make_bags(args.bags, mean_len, max_len, vocab)
        lengths = ids.row_lengths().numpy()
        label = (f"mean {lengths.mean():.0f} ids, max {lengths.max()}, "
                 f"{lengths.sum()} ids, padded {lengths.size}x"
                 f"{lengths.max()}")
        for name in CANDIDATES:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-child", name,
                 "--child-mean", str(mean_len), "--bags", str(args.bags),
                 "--vocab", str(vocab), "--dim", str(dim),
                 "--max-len", str(max_len)],
                capture_output=True, text=True, check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.setdefault(label, {})[name] = result["delta_mb"]
    width = max(len(n) for n in CANDIDATES)
    for label, cells in rows.items():
        print(f"{label}:")
        for name in CANDIDATES:
            print(f"  {name:<{width}}  +{cells[name]:8.1f} MB")
    return rows


class SparseBag(keras.layers.Layer):
    """`safe_embedding_lookup_sparse` as a layer (benchmark baseline)."""

    def __init__(self, vocab, dim, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.dim = vocab, dim

    def build(self, input_shape):
        self.table = self.add_weight(shape=(self.vocab, self.dim),
                                     initializer="uniform")

    def call(self, ids):
        return tf.nn.safe_embedding_lookup_sparse(self.table.value, ids,
                                                  combiner="mean")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)


def fit_section(ids, vocab, dim, repeats):
    labels = (np.arange(int(ids.nrows())) % 2).astype("float32")[:, None]

    def classifier(bag_input, bag_layer, jit_compile=False):
        x = bag_layer(bag_input)
        outputs = keras.layers.Dense(1, activation="sigmoid")(x)
        model = keras.Model(bag_input, outputs)
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy",
                      jit_compile=jit_compile)
        return model

    padded = ids.to_tensor()
    sparse = ids.to_sparse()
    models = {
        "RaggedEmbeddingBag": (
            classifier(
                keras.Input(shape=(None,), dtype="int64", ragged=True),
                RaggedEmbeddingBag(vocab, dim),
            ),
            ids,
        ),
        "RaggedEmbeddingBag (jit_compile)": (
            classifier(
                keras.Input(shape=(None,), dtype="int64", ragged=True),
                RaggedEmbeddingBag(vocab, dim),
                jit_compile=True,
            ),
            ids,
        ),
        "padded Embedding+GAP": (
            classifier(
                keras.Input(shape=(None,), dtype="int64"),
                lambda x: keras.layers.GlobalAveragePooling1D()(
                    keras.layers.Embedding(vocab, dim, mask_zero=True)(x)
                ),
            ),
            padded,
        ),
        "safe_embedding_lookup_sparse": (
            classifier(
                keras.Input(shape=(None,), dtype="int64", sparse=True),
                SparseBag(vocab, dim),
            ),
            sparse,
        ),
    }
    return compare(
        {name: (lambda m=m, x=x: m.train_on_batch(x, labels))
         for name, (m, x) in models.items()},
        baseline="RaggedEmbeddingBag",
        warmup=2,
        repeats=repeats,
        title="fit step (train_on_batch, Adam) of a bag-of-words classifier",
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bags", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2000)
    parser.add_argument("--mean-lengths", type=int, nargs="+",
                        default=[46, 183])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sections", nargs="+",
                        default=["combiners", "xla", "memory"])
    parser.add_argument("--memory-child", default=None)
    parser.add_argument("--child-mean", type=int, default=200)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.child_mean, args.bags,
                     args.vocab, args.dim, args.max_len)
        return
    if args.quick:
        args.bags, args.vocab, args.repeats = 64, 1000, 3
        args.max_len, args.mean_lengths = 100, [10, 30]
    ids = make_bags(args.bags, max(args.mean_lengths), args.max_len,
                    args.vocab)
    lengths = ids.row_lengths().numpy()
    print_config({
        "bags": args.bags, "vocab": args.vocab, "dim": args.dim,
        "lengths": f"lognormal(sigma=1), mean {lengths.mean():.1f}, "
                   f"max {lengths.max()} (clip {args.max_len}), "
                   f"{lengths.sum()} ids",
        "combiner": "mean", "table dtype": "float32",
    })
    if "combiners" in args.sections:
        combiners_section(args, args.vocab, args.dim, args.max_len)
    if "paths" in args.sections:
        paths_section(ids, args.vocab, args.dim, args.repeats)
    if "time" in args.sections:
        time_section(ids, args.vocab, args.dim, False, args.repeats)
    if "xla" in args.sections:
        time_section(ids, args.vocab, args.dim, True, args.repeats)
    if "memory" in args.sections:
        memory_section(args, args.vocab, args.dim, args.max_len)
    if "fit" in args.sections:
        fit_section(ids, args.vocab, args.dim, args.repeats)


if __name__ == "__main__":
    main()
