"""RaggedEmbeddingBag vs PyTorch's nn.EmbeddingBag on the same bags.

The same lognormal bags as `ragged_embedding_bag_benchmark.py` (1024 bags,
vocabulary 50k, dimension 64, float32), for each mean bag length:

- forward: `RaggedEmbeddingBag` in a `tf.function` vs `nn.EmbeddingBag`
  under `torch.no_grad()`;
- forward + backward with respect to the table (loss `sum(out * probe)`):
  the layer (gradient: `tf.IndexedSlices`, one row per distinct id) vs
  `nn.EmbeddingBag(sparse=False)` (dense table-sized gradient),
  `sparse=True` (sparse gradient with one row per id *occurrence*) and
  `sparse=True` followed by `.coalesce()` (one row per distinct id: the
  layer's gradient).

Both frameworks run in one process, interleaved, after warm-up, with the
same number of threads (all cores unless `--threads`). Timings never assert
anything.

Install torch's CPU wheel with the benchmark's own extra
(`pip install ".[bench-torch]"`); the package and its tests never need it.

Run: `python benchmarks/ragged_embedding_bag_torch_benchmark.py
[--mean-lengths 46 183] [--combiner mean] [--repeats 15] [--quick]`.
"""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from benchmarks._harness import compare, print_config  # noqa: E402
from benchmarks.ragged_embedding_bag_benchmark import make_bags  # noqa: E402
from keras_research.layers import RaggedEmbeddingBag  # noqa: E402


def build(ids, vocab, dim, combiner):
    """Returns {name: zero-argument callable} for forward and fwd+bwd."""
    rng = np.random.default_rng(0)
    table = rng.uniform(-0.05, 0.05, (vocab, dim)).astype("float32")
    probe = rng.normal(size=(int(ids.nrows()), dim)).astype("float32")

    layer = RaggedEmbeddingBag(vocab, dim, combiner)
    layer.build()
    layer.embeddings.assign(table)
    tf_probe = tf.constant(probe)

    @tf.function
    def tf_forward(x):
        return layer(x)

    @tf.function
    def tf_train(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) * tf_probe)
        grad = tape.gradient(loss, layer.embeddings.value)
        return loss, grad.values

    values = torch.from_numpy(ids.values.numpy())
    offsets = torch.from_numpy(ids.row_splits.numpy()[:-1])
    torch_probe = torch.from_numpy(probe)
    bags = {}
    for sparse in (False, True):
        bag = torch.nn.EmbeddingBag(vocab, dim, mode=combiner, sparse=sparse)
        with torch.no_grad():
            bag.weight.copy_(torch.from_numpy(table))
        bags[sparse] = bag

    def torch_forward():
        with torch.no_grad():
            return bags[False](values, offsets)

    def torch_train(sparse, coalesce=False):
        def run():
            bag = bags[sparse]
            bag.weight.grad = None
            loss = (bag(values, offsets) * torch_probe).sum()
            loss.backward()
            grad = bag.weight.grad
            if coalesce:
                grad = grad.coalesce()
            return float(loss.detach())

        return run

    x = ids
    got = tf_forward(x).numpy()
    expected = torch_forward().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    forward = {
        "RaggedEmbeddingBag (tf.function)": lambda: tf_forward(x),
        "torch nn.EmbeddingBag (no_grad)": torch_forward,
    }
    train = {
        "RaggedEmbeddingBag (IndexedSlices, distinct ids)":
            lambda: tf_train(x),
        "torch sparse=False (dense grad)": torch_train(False),
        "torch sparse=True (row per occurrence)": torch_train(True),
        "torch sparse=True + coalesce (distinct ids)": torch_train(
            True, coalesce=True),
    }
    return forward, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bags", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=2000)
    parser.add_argument("--mean-lengths", type=int, nargs="+",
                        default=[46, 183])
    parser.add_argument("--combiner", default="mean",
                        choices=("sum", "mean", "max"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.bags, args.vocab, args.repeats = 64, 1000, 3
        args.max_len, args.mean_lengths = 100, [10, 30]
    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    print_config({
        "torch": f"{torch.__version__}, threads {torch.get_num_threads()}",
        "tf intra-op threads": args.threads,
        "bags": args.bags, "vocab": args.vocab, "dim": args.dim,
        "combiner": args.combiner, "table dtype": "float32",
    })
    for mean_len in args.mean_lengths:
        ids = make_bags(args.bags, mean_len, args.max_len, args.vocab)
        lengths = ids.row_lengths().numpy()
        label = (f"mean {lengths.mean():.1f} ids per bag (lognormal, "
                 f"max {lengths.max()}), {lengths.sum()} ids")
        forward, train = build(ids, args.vocab, args.dim, args.combiner)
        compare(forward, warmup=3, repeats=args.repeats,
                title=f"forward, {label}")
        compare(train, warmup=3, repeats=args.repeats,
                title=f"forward + backward, {label}")


if __name__ == "__main__":
    main()
