"""Vocabulary building: `BagOfNgrams.adapt` vs `TextVectorization.adapt`.

    python benchmarks/bag_of_ngrams_benchmark.py --data-dir ../shared/tfds

Both learn the 200,000 most frequent words and bigrams of IMDB's 25,000
training reviews (standardized once beforehand by
`keras_research.layers.StandardizeText`, so both count the same tokens),
interleaved after a warm-up, and the vocabularies are compared. Then the
same for turning the texts into ids (`BagOfNgrams(distinct=True)` vs
`TextVectorization` alone, whose bags keep repeats, and `TextVectorization`
followed by the same per-row de-duplication, as the example did before). Without
the prepared data (`--synthetic`), random Zipf-distributed texts of the same
size are used. Runs in about 2-4 minutes on 2 cores. Nothing is asserted.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402
from benchmarks._harness import compare, print_config  # noqa: E402
from keras_research.layers.bag_of_ngrams import (  # noqa: E402
    _distinct_per_row,
)

MAX_TOKENS = 200_000


def imdb_texts(data_dir):
    import tensorflow_datasets as tfds

    ds = tfds.load("imdb_reviews", split="train", data_dir=data_dir,
                   download=False, as_supervised=True)
    return ds.map(lambda x, y: x)


def synthetic_texts(n=25_000, words=50_000, length=230, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.zipf(1.2, size=(n, length)) % words
    return tf.data.Dataset.from_tensor_slices(
        [" ".join(f"w{i}" for i in row) for row in ids])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(
        Path(__file__).resolve().parents[2] / "shared" / "tfds"))
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    texts = synthetic_texts() if args.synthetic else imdb_texts(args.data_dir)
    standardize = keras_research.layers.StandardizeText()
    standardized = list(texts.batch(2048).map(standardize))
    data = tf.data.Dataset.from_tensor_slices(tf.concat(standardized, 0))
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print_config({"texts": int(data.cardinality()), "max_tokens": MAX_TOKENS,
                  "ngrams": 2, "load average at start": load})

    ours = keras_research.layers.BagOfNgrams(max_tokens=MAX_TOKENS, ngrams=2)
    theirs = keras.layers.TextVectorization(
        max_tokens=MAX_TOKENS, standardize=None, ngrams=2, ragged=True)
    compare({
        "TextVectorization.adapt": lambda: theirs.adapt(data.batch(2048)),
        "BagOfNgrams.adapt": lambda: ours.adapt(data.batch(2048)),
    }, baseline="TextVectorization.adapt", warmup=1, repeats=args.repeats,
        title="vocabulary of 200,000 words and bigrams")
    a = ours.get_vocabulary()[1:]
    b = theirs.get_vocabulary()[2:]  # TextVectorization: "", "[UNK]", ...
    print(f"# vocabularies: {len(a)} vs {len(b)} tokens, "
          f"{len(set(a) & set(b)) / max(len(b), 1):.4%} shared (ties at the "
          f"cut may differ); first 1000 identical: {a[:1000] == b[:1000]}")

    batches = data.batch(1024)

    def vectorize(layer):
        def run():
            for ids in batches.map(layer, tf.data.AUTOTUNE):
                pass
            return ids
        return run

    compare({
        "TextVectorization (bags with repeats)": vectorize(theirs),
        "TextVectorization + distinct ids": vectorize(
            lambda x: _distinct_per_row(tf.cast(theirs(x), tf.int64))),
        "BagOfNgrams (distinct ids)": vectorize(ours),
    }, baseline="TextVectorization (bags with repeats)", warmup=1,
        repeats=args.repeats, title="texts to ragged ids, whole split")


if __name__ == "__main__":
    main()
