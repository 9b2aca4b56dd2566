"""Text classification on any TFDS dataset with every keras_research part.

A fastText-style classifier (Joulin et al., 2016, arXiv:1607.01759): each
text becomes the *set* of its word and bigram ids, kept ragged (no padding
anywhere), averaged by `keras_research.layers.RaggedEmbeddingBag`, passed
through a low-rank `keras_research.layers.FactorizedDense` and a linear
classifier head. It trains with `keras_research.optimizers.Adam` (the
XLA-fused template optimizer) and
`keras_research.callbacks.JacobianRegularizer`, which penalizes the
Jacobian of the logits with respect to the embedding bag's output and logs
`jacobian_norm` in the progress bar.

Quick start (downloads IMDB through TFDS the first time):

    python examples/text_classification.py
    python examples/text_classification.py --predict "A wonderful film."

Other datasets with a text feature and a `ClassLabel` (found from the
builder's features, or named with `--text-key` / `--label-key`):

    python examples/text_classification.py --dataset trec \
        --label-key label-coarse
    python examples/text_classification.py --dataset ag_news_subset \
        --text-key description

Offline, with prepared copies: `--data-dir DIR --no-download`. Without the
data at all: `--smoke` runs the same code on `tfds.testing.mock_data`.

Pipeline. A `StandardizeText` layer lowercases, turns HTML tags into
spaces, keeps `!` and `?` as words and strips other punctuation;
`keras.layers.TextVectorization` splits on whitespace, forms word n-grams
up to `--ngrams` and maps them to ids (ragged output). Its vocabulary, the
`--max-tokens` most frequent tokens of the training part only (never the
validation or test texts), is counted in one pass of `tf.strings` ops
(`count_vocabulary`, less than half the CPU time of `adapt` here). A
small `UniqueIds` layer then keeps each id once per text (a binary bag of
words: +0.5 to +1 point of IMDB accuracy over counts, and fewer ids to
average). They run in a parallel `tf.data` map over batches of raw
strings. The training split
is vectorized once and kept in memory as one `tf.RaggedTensor`; each
epoch draws a permutation that is a pure function of `(--seed, epoch)`
and gathers whole ragged batches from it (10x cheaper here than
`shuffle` + `ragged_batch` over single examples). Because the order of
epoch `k` does not depend on how many epochs this process has run, a
killed run started again with the same command resumes exactly:
`BackupAndRestore` restores the state at the end of the last finished
epoch and the interrupted epoch is replayed with the same batches.

The learning rate decays linearly to 0 over the run (like fastText's).
Test metrics are those of the final model; the weights with the best
validation accuracy are kept in `checkpoints/best.weights.h5`.

Outputs under `--output-dir` (default `runs/text_classification`):
`model.keras` (raw strings in, class probabilities out; the text
preprocessing is inside), `class_names.json`, `metrics.json`,
`curves.png`, `training_log.csv`, `logs/` (TensorBoard),
`checkpoints/best.weights.h5` and, while training, `backup/`.
`model.keras` uses two small layers defined here, `StandardizeText` and
`UniqueIds`, registered for `safe_mode=True` loading under the package
name `keras_research_examples`: to load the model in another program,
import this module first (`--predict` does it for you).

Errors in the arguments or the data (unknown dataset, no text feature or
`ClassLabel`, missing split, data not available offline, bad values, no
model for `--predict`) print one line and exit with status 2.
"""

import argparse
import difflib
import importlib.util
import json
import os
import resource
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402

EXIT_USAGE = 2
OPTIMIZERS = {
    "adam": keras_research.optimizers.Adam,
    "adan": keras_research.optimizers.Adan,
    "power_momentum": keras_research.optimizers.PowerMomentum,
}
EMBEDDING_BAG = "embedding_bag"


class UsageError(Exception):
    """A problem with the arguments or the data: one line, exit status 2."""


@keras.saving.register_keras_serializable(package="keras_research_examples")
class StandardizeText(keras.layers.Layer):
    """Lowercases text, drops HTML tags and most punctuation.

    Like `TextVectorization`'s `"lower_and_strip_punctuation"`, but HTML
    tags (IMDB's `<br />`) become spaces and `!` and `?` are kept as
    words of their own, since they carry sentiment.

    Call arguments:
        inputs: string tensor of any shape.

    Returns:
        The standardized strings, same shape.
    """

    def call(self, inputs):
        x = tf.strings.lower(inputs, encoding="utf-8")
        x = tf.strings.regex_replace(x, r"<[^>]*>", " ")
        x = tf.strings.regex_replace(x, r"([!?])", r" \1 ")
        return tf.strings.regex_replace(
            x, r"[\"#$%&()*+,\-./:;<=>@\[\\\]^_`{|}~']", ""
        )

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, "string")


@keras.saving.register_keras_serializable(package="keras_research_examples")
class UniqueIds(keras.layers.Layer):
    """Keeps the first occurrence of each id in every row of a ragged batch.

    Turns a bag (multiset) of token ids into a set, so that a mean over the
    bag weights every distinct word or n-gram of a text equally, however
    often it repeats: the binary bag of words of classical text
    classifiers.

    Call arguments:
        inputs: `tf.RaggedTensor` of non-negative integer ids, shape
            `(batch, (length))`.

    Returns:
        `tf.RaggedTensor` of the same dtype, shape `(batch, (unique))`,
        with ids in order of first occurrence.
    """

    def call(self, inputs):
        values = tf.cast(inputs.flat_values, tf.int64)
        rows = inputs.value_rowids()
        width = tf.maximum(tf.reduce_max(values), 0) + 1
        # One key per (row, id); `tf.unique` keeps first occurrences in
        # order, so the rows of the unique keys stay sorted.
        keys, _ = tf.unique(rows * width + values)
        return tf.RaggedTensor.from_value_rowids(
            tf.cast(keys % width, inputs.dtype),
            keys // width,
            nrows=inputs.nrows(out_type=tf.int64),
        )

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, inputs.dtype, ragged=True)


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad argument in one line (no usage block), exit status 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer, received {text!r}"
        )
    return value


def non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a finite number >= 0, received {text!r}"
        )
    return value


def positive_float(text):
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be > 0, received {text!r}")
    return value


def fraction(text):
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1), received {text!r}"
        )
    return value


def build_parser():
    p = ArgumentParser(
        prog="text_classification.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--dataset",
        default="imdb_reviews",
        help="TFDS dataset name (optionally name:version).",
    )
    data.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data directory; None: TFDS's own, which honours "
        "TFDS_DATA_DIR.",
    )
    data.add_argument(
        "--no-download",
        action="store_true",
        help="Never download; use a prepared copy only.",
    )
    data.add_argument(
        "--text-key",
        default=None,
        help="Text feature; None: the dataset's only Text feature.",
    )
    data.add_argument(
        "--label-key",
        default=None,
        help="Label feature; None: the dataset's only ClassLabel.",
    )
    data.add_argument(
        "--train-split",
        default="train",
        help="TFDS split to train on (slicing syntax allowed).",
    )
    data.add_argument(
        "--test-split",
        default="test",
        help="TFDS split for the final test metrics only.",
    )
    data.add_argument(
        "--validation-fraction",
        type=fraction,
        default=0.1,
        help="Part of the training split held out for "
        "validation (0 disables validation).",
    )
    data.add_argument(
        "--max-tokens",
        type=positive_int,
        default=200_000,
        help="Vocabulary size (words and n-grams, most "
        "frequent first, including padding and OOV).",
    )
    data.add_argument(
        "--ngrams",
        type=positive_int,
        default=2,
        help="Use word n-grams up to this length.",
    )
    data.add_argument(
        "--unique-ids",
        default=True,
        action=argparse.BooleanOptionalAction,
        help="Count each word/n-gram once per text.",
    )
    model = p.add_argument_group("model and training")
    model.add_argument(
        "--embedding-dim",
        type=positive_int,
        default=16,
        help="Output size of the RaggedEmbeddingBag.",
    )
    model.add_argument(
        "--hidden-units",
        type=positive_int,
        default=16,
        help="Units of the FactorizedDense layer.",
    )
    model.add_argument(
        "--rank",
        type=positive_int,
        default=4,
        help="Rank of the FactorizedDense kernel.",
    )
    model.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default="adam",
        help="keras_research optimizer.",
    )
    model.add_argument(
        "--learning-rate",
        type=positive_float,
        default=0.03,
        help="Initial learning rate, decayed linearly to 0.",
    )
    model.add_argument(
        "--batch-size", type=positive_int, default=512, help="Texts per step."
    )
    model.add_argument(
        "--epochs", type=positive_int, default=3, help="Training epochs."
    )
    model.add_argument(
        "--jacobian-weight",
        type=non_negative_float,
        default=0.001,
        help="Weight of the Jacobian penalty (0 disables).",
    )
    model.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of the initial weights and of the data order.",
    )
    model.add_argument(
        "--deterministic",
        action="store_true",
        help="Enable TensorFlow op determinism.",
    )
    model.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Keras verbosity (1: progress bar).",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--output-dir",
        default=os.path.join("runs", "text_classification"),
        help="Where the model, metrics, logs and backups go.",
    )
    run.add_argument(
        "--predict",
        nargs="+",
        metavar="TEXT",
        help="Classify these texts with the saved model of "
        "--output-dir and exit.",
    )
    run.add_argument(
        "--smoke",
        action="store_true",
        help="Run on tfds.testing.mock_data (random data with "
        "the dataset's real feature spec), few steps.",
    )
    run.add_argument(
        "--smoke-examples",
        type=positive_int,
        default=64,
        help=argparse.SUPPRESS,
    )
    return p


# --------------------------------------------------------------------- data


def get_builder(args):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(args.dataset, data_dir=args.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        name = args.dataset.split(":")[0].split("/")[0]
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown TFDS dataset --dataset={args.dataset!r}.{hint} "
            "See https://www.tensorflow.org/datasets/catalog/overview"
        ) from None
    except Exception as e:  # noqa: BLE001 - e.g. a bad version string
        raise UsageError(
            f"cannot open --dataset={args.dataset!r}: {first_line(e)}"
        ) from None
    return builder


def first_line(error):
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def find_keys(features, text_key, label_key, dataset):
    """Finds the text and label features of a TFDS `FeaturesDict`."""
    import tensorflow_datasets as tfds

    keys = list(features.keys())
    texts = [k for k in keys if isinstance(features[k], tfds.features.Text)]
    labels = [
        k for k in keys if isinstance(features[k], tfds.features.ClassLabel)
    ]
    chosen = []
    for arg, value, found, kind in (
        ("--text-key", text_key, texts, "Text"),
        ("--label-key", label_key, labels, "ClassLabel"),
    ):
        if value is not None:
            if value not in found:
                raise UsageError(
                    f"{arg}={value!r} is not a {kind} feature of "
                    f"{dataset!r}; its {kind} features: {found or 'none'} "
                    f"(all features: {keys})"
                )
            chosen.append(value)
        elif len(found) == 1:
            chosen.append(found[0])
        elif not found:
            raise UsageError(
                f"dataset {dataset!r} has no {kind} feature (features: "
                f"{keys}); this example needs one text and one class label"
            )
        else:
            raise UsageError(
                f"dataset {dataset!r} has several {kind} features {found}; "
                f"choose one with {arg}"
            )
    return chosen[0], chosen[1]


def check_splits(builder, args):
    splits = dict(builder.info.splits)
    if not splits:  # mock_data and unprepared builders know no splits
        return
    for arg, split in (
        ("--train-split", args.train_split),
        ("--test-split", args.test_split),
    ):
        if split.split("[")[0] not in splits:
            raise UsageError(
                f"dataset {args.dataset!r} has no split {arg}={split!r}; "
                f"its splits: {sorted(splits)}"
            )


def prepare(builder, args):
    """Makes sure the data is on disk, or says exactly what to do."""
    if builder.is_prepared():
        return
    where = builder.data_dir
    advice = (
        "pass --data-dir pointing to a directory holding a prepared copy, "
        "run once with network access and without --no-download, or use "
        "--smoke to try the example on mock data"
    )
    if args.no_download:
        raise UsageError(
            f"dataset {args.dataset!r} is not prepared in {where} and "
            f"--no-download was given: {advice}"
        )
    print(
        f"Downloading and preparing {args.dataset!r} with TFDS into "
        f"{where} (offline? pass --no-download to stop here at once)",
        file=sys.stderr,
    )
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - network and file errors
        raise UsageError(
            f"could not download {args.dataset!r} ({first_line(e)}): {advice}"
        ) from None


def load_splits(args):
    """Returns raw (text, label) datasets, sizes and dataset facts."""
    import tensorflow_datasets as tfds

    builder = get_builder(args)
    text_key, label_key = find_keys(
        builder.info.features, args.text_key, args.label_key, args.dataset
    )
    if not args.smoke:
        prepare(builder, args)
    check_splits(builder, args)

    def as_pairs(split):
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except Exception as e:  # noqa: BLE001 - bad slicing syntax etc.
            raise UsageError(
                f"cannot read split {split!r} of {args.dataset!r}: "
                f"{first_line(e)}"
            ) from None
        return ds.map(
            lambda ex: (ex[text_key], ex[label_key]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    train = as_pairs(args.train_split)
    test = as_pairs(args.test_split)
    num_train = count(train, builder, args.train_split)
    num_val = int(round(num_train * args.validation_fraction))
    if num_train - num_val < 1:
        raise UsageError(
            f"split {args.train_split!r} has {num_train} examples, too few "
            f"for --validation-fraction={args.validation_fraction}"
        )
    # TFDS shuffles examples when it prepares a dataset, so the tail of the
    # training split is a fair validation set.
    val = train.skip(num_train - num_val) if num_val else None
    train = train.take(num_train - num_val)
    class_names = builder.info.features[label_key].names
    info = {
        "num_test_examples": count(test, builder, args.test_split),
        "dataset": builder.info.full_name,
        "text_key": text_key,
        "label_key": label_key,
        "class_names": class_names,
        "num_train_examples": num_train - num_val,
        "num_validation_examples": num_val,
    }
    del tfds
    return train, val, test, info


def count(ds, builder, split):
    splits = dict(builder.info.splits)
    if split in splits:
        return splits[split].num_examples
    return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))


def _first_occurrences(index, num_unique):
    """Position of the first element of each group of `tf.unique`."""
    return tf.math.unsorted_segment_min(
        tf.range(tf.size(index)), index, num_unique
    )


def count_vocabulary(train_texts, standardize, args):
    """The `--max-tokens` most frequent words and n-grams of the texts.

    `tf.strings` ops over the training texts, tokenized exactly as
    `TextVectorization(standardize=None, split="whitespace", ngrams=...)`
    does after `standardize`. Each batch of texts is counted in a parallel
    `tf.data` map (`tf.unique_with_counts` over 64-bit fingerprints of the
    tokens), then the per-batch counts are merged. The counts are those of
    `TextVectorization.adapt` (most frequent first; ties, here in order of
    first appearance, may be cut differently at `max_tokens`), for less
    than half of its CPU time here.
    """

    def count_batch(texts):
        tokens = tf.strings.split(standardize(texts))
        if args.ngrams > 1:
            tokens = tf.strings.ngrams(
                tokens,
                ngram_width=tuple(range(1, args.ngrams + 1)),
                separator=" ",
            )
        tokens = tokens.flat_values
        unique, index, counts = tf.unique_with_counts(
            tf.strings.to_hash_bucket_fast(tokens, 2**62)
        )
        first = _first_occurrences(index, tf.size(unique))
        return unique, counts, tf.gather(tokens, first)

    parts = list(
        train_texts.batch(2048).map(
            count_batch,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    )
    fingerprints, counts, tokens = (
        tf.concat([part[i] for part in parts], axis=0) for i in range(3)
    )
    unique, index = tf.unique(fingerprints)
    if int(tf.size(unique)) == 0:
        raise UsageError(
            f"the texts of --train-split={args.train_split!r} contain no "
            "words; check --text-key"
        )
    counts = tf.math.unsorted_segment_sum(counts, index, tf.size(unique))
    first = _first_occurrences(index, tf.size(unique))
    # Two ids are reserved by TextVectorization: padding and out-of-vocab.
    k = min(args.max_tokens - 2, int(tf.size(unique)))
    top = tf.math.top_k(counts, k=k, sorted=True).indices
    return tf.gather(tokens, tf.gather(first, top)).numpy()


def make_preprocessor(train_texts, args):
    """Text to ragged ids, fitted on the training texts only.

    Returns the preprocessing layers (also used by the exported model) and
    a function applying them to a batch of strings.
    """
    standardize = StandardizeText(name="standardize_text")
    vectorizer = keras.layers.TextVectorization(
        standardize=None,
        split="whitespace",
        ngrams=args.ngrams if args.ngrams > 1 else None,
        output_mode="int",
        ragged=True,
        name="text_vectorization",
    )
    # Set after construction, the vocabulary is saved as a `.keras` asset
    # file (as after `adapt`) rather than inside the JSON config.
    vectorizer.set_vocabulary(
        [
            t.decode("utf-8")
            for t in count_vocabulary(train_texts, standardize, args)
        ]
    )
    layers = [standardize, vectorizer]
    if args.unique_ids:
        layers.append(UniqueIds(name="unique_ids"))

    def preprocess(texts):
        ids = texts
        for layer in layers:
            ids = layer(ids)
        return tf.cast(ids, tf.int64)

    return layers, preprocess


def vectorize(ds, preprocess, batch_size):
    return ds.batch(batch_size).map(
        lambda x, y: (preprocess(x), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def materialize(ds):
    """Concatenates a dataset of (ragged ids, labels) batches in memory."""
    ids, labels = [], []
    for x, y in ds.prefetch(tf.data.AUTOTUNE):
        ids.append(x)
        labels.append(y)
    return tf.concat(ids, axis=0), tf.concat(labels, axis=0)


def training_batches(ids, labels, batch_size, seed, epoch):
    """Batches in an order that is a function of `(seed, epoch)` only."""
    n = int(labels.shape[0])

    def epoch_order(_):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64),
            seed=tf.stack([tf.constant(seed, tf.int64), epoch.read_value()]),
        )
        return tf.data.Dataset.from_tensor_slices(order)

    num_batches = -(-n // batch_size)
    return (
        tf.data.Dataset.range(1)
        .flat_map(epoch_order)
        .batch(batch_size)
        .map(
            lambda i: (tf.gather(ids, i), tf.gather(labels, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .apply(tf.data.experimental.assert_cardinality(num_batches))
        .prefetch(tf.data.AUTOTUNE)
    )


class EpochVariable(keras.callbacks.Callback):
    """Tells the input pipeline which epoch starts (for its data order)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


class Timer(keras.callbacks.Callback):
    """Measures training time (excluding validation) and epochs run."""

    def __init__(self):
        super().__init__()
        self.seconds = 0.0
        self.epochs_run = 0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None

    def on_epoch_end(self, epoch, logs=None):
        if self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None
        self.epochs_run += 1


# -------------------------------------------------------------------- model


def build_model(vocabulary_size, num_classes, args):
    ids = keras.Input(shape=(None,), dtype="int64", ragged=True, name="ids")
    x = keras_research.layers.RaggedEmbeddingBag(
        vocabulary_size,
        args.embedding_dim,
        combiner="mean",
        name=EMBEDDING_BAG,
    )(ids)
    x = keras_research.layers.FactorizedDense(
        args.hidden_units, rank=args.rank, name="factorized_dense"
    )(x)
    logits = keras.layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(ids, logits, name="bag_of_ngrams_classifier")


def export_model(preprocessing_layers, model):
    """Raw strings in, class probabilities out."""
    text = keras.Input(shape=(), dtype="string", name="text")
    ids = text
    for layer in preprocessing_layers:
        ids = layer(ids)
    probabilities = keras.layers.Softmax(name="probabilities")(model(ids))
    return keras.Model(text, probabilities, name="text_classifier")


# ---------------------------------------------------------------- reporting


def plot_curves(csv_path, png_path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed (pip install 'keras-research"
            "[examples]'); no curves.png written",
            file=sys.stderr,
        )
        return False
    rows = read_log(csv_path)
    if not rows:
        return False
    epochs = [int(r["epoch"]) + 1 for r in rows]
    panels = [
        m
        for m in ("loss", "accuracy", "jacobian_norm")
        if rows and m in rows[0]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5))
    for ax, metric in zip(list(axes) if len(panels) > 1 else [axes], panels):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = [logged_value(r, prefix + metric) for r in rows]
            if None not in values:
                ax.plot(
                    epochs,
                    values,
                    style,
                    label="validation" if prefix else "training",
                )
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


def read_log(csv_path):
    """Rows of the CSV log, one per epoch (the last row of a replayed one)."""
    import csv

    if not os.path.exists(csv_path):
        return []
    with open(csv_path) as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}
    return [rows[e] for e in sorted(rows)]


def logged_value(row, key):
    """A number from a CSV log row, or `None` (CSVLogger writes "NA")."""
    try:
        return float(row[key])
    except (KeyError, TypeError, ValueError):
        return None


def best_logged(csv_path, monitor):
    values = [logged_value(r, monitor) for r in read_log(csv_path)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def peak_memory_mb():
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------- main


def train(args, callbacks=()):
    """Trains, evaluates and exports; returns the metrics dict.

    Args:
        args: parsed arguments (see `build_parser`).
        callbacks: extra Keras callbacks for `fit`, run after the
            example's own.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()

    limit = min(args.embedding_dim, args.hidden_units)
    if args.rank > limit:
        raise UsageError(
            f"--rank={args.rank} exceeds min(--embedding-dim, "
            f"--hidden-units)={limit}, the largest rank of the "
            "FactorizedDense kernel"
        )
    train_raw, val_raw, test_raw, info = load_splits(args)
    os.makedirs(args.output_dir, exist_ok=True)
    preprocessing_layers, preprocess = make_preprocessor(
        train_raw.map(lambda x, y: x), args
    )
    vocabulary_size = preprocessing_layers[1].vocabulary_size()
    train_ids, train_labels = materialize(
        vectorize(train_raw, preprocess, 1024)
    )
    val = (
        vectorize(val_raw, preprocess, args.batch_size).cache()
        if val_raw is not None
        else None
    )
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_ds = training_batches(
        train_ids, train_labels, args.batch_size, args.seed, epoch
    )
    preprocessing_seconds = time.perf_counter() - start

    num_classes = len(info["class_names"])
    model = build_model(vocabulary_size, num_classes, args)
    steps = -(-int(train_labels.shape[0]) // args.batch_size) * args.epochs
    schedule = keras.optimizers.schedules.PolynomialDecay(
        args.learning_rate, decay_steps=steps, end_learning_rate=0.0
    )
    model.compile(
        optimizer=OPTIMIZERS[args.optimizer](learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    monitor = "val_accuracy" if val is not None else "accuracy"
    backup_dir = os.path.join(args.output_dir, "backup")
    best_path = os.path.join(args.output_dir, "checkpoints", "best.weights.h5")
    csv_path = os.path.join(args.output_dir, "training_log.csv")
    # BackupAndRestore keeps `backup/` until a fit finishes: without it
    # this is a fresh run, whose log and best checkpoint start anew.
    resuming = os.path.isdir(backup_dir)
    if not resuming:
        for path in (csv_path, best_path):
            if os.path.exists(path):
                os.remove(path)
    os.makedirs(os.path.dirname(best_path), exist_ok=True)
    timer = Timer()
    callbacks = [
        EpochVariable(epoch),
        # The log is written before the backup, so that a resumed run has
        # the rows of every epoch it does not replay.
        keras.callbacks.CSVLogger(csv_path, append=True),
        keras.callbacks.ModelCheckpoint(
            best_path,
            monitor=monitor,
            mode="max",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_logged(csv_path, monitor),
        ),
        # double_checkpoint: a kill while the backup is written leaves a
        # truncated .h5; the previous backup is then restored instead.
        keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True),
        timer,
        *callbacks,
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(args.output_dir, "logs"), profile_batch=0
            )
        )
    else:
        print(
            "tensorboard is not installed (pip install 'keras-research"
            "[examples]'); no TensorBoard logs written",
            file=sys.stderr,
        )
    if args.jacobian_weight > 0:
        callbacks.insert(
            0,
            keras_research.callbacks.JacobianRegularizer(
                args.jacobian_weight, wrt=EMBEDDING_BAG
            ),
        )
    fit_start = time.perf_counter()
    model.fit(
        train_ds,
        validation_data=val,
        epochs=args.epochs,
        callbacks=callbacks,
        verbose=args.verbose,
        shuffle=False,  # the pipeline shuffles, per epoch
    )
    fit_seconds = time.perf_counter() - fit_start

    eval_start = time.perf_counter()
    test = vectorize(test_raw, preprocess, args.batch_size).prefetch(
        tf.data.AUTOTUNE
    )
    results = model.evaluate(test, verbose=0, return_dict=True)
    eval_seconds = time.perf_counter() - eval_start

    model_path = os.path.join(args.output_dir, "model.keras")
    export_model(preprocessing_layers, model).save(model_path)
    with open(os.path.join(args.output_dir, "class_names.json"), "w") as f:
        json.dump(info["class_names"], f)
    wall = time.perf_counter() - start
    log = read_log(csv_path)
    best = best_logged(csv_path, monitor)
    metrics = {
        "test_accuracy": float(results["accuracy"]),
        "test_loss": float(results["loss"]),
        "final_" + monitor: logged_value(log[-1], monitor) if log else None,
        "best_" + monitor: best,
        "best_epoch": next(
            (
                int(r["epoch"]) + 1
                for r in log
                if logged_value(r, monitor) == best
            ),
            None,
        ),
        "best_checkpoint": best_path,
        "train_examples_per_second": (
            info["num_train_examples"] * timer.epochs_run / timer.seconds
            if timer.seconds
            else None
        ),
        "wall_time_seconds": wall,
        "preprocessing_seconds": preprocessing_seconds,
        "fit_seconds": fit_seconds,
        "training_seconds": timer.seconds,
        "evaluation_seconds": eval_seconds,
        "epochs_run_in_this_process": timer.epochs_run,
        "peak_memory_mb": peak_memory_mb(),
        "vocabulary_size": vocabulary_size,
        **info,
        "model_path": model_path,
        "args": {k: v for k, v in vars(args).items() if k != "predict"},
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_curves(csv_path, os.path.join(args.output_dir, "curves.png"))
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, test loss "
        f"{metrics['test_loss']:.4f}, "
        f"{metrics['train_examples_per_second']:.0f} training examples/s, "
        f"wall time {wall:.1f} s, peak memory "
        f"{metrics['peak_memory_mb']:.0f} MB; outputs in {args.output_dir}"
    )
    return metrics


def predict(args):
    model_path = os.path.join(args.output_dir, "model.keras")
    names_path = os.path.join(args.output_dir, "class_names.json")
    if not (os.path.exists(model_path) and os.path.exists(names_path)):
        raise UsageError(
            f"no trained model in --output-dir={args.output_dir!r} (expected "
            f"{model_path}); train first by running without --predict"
        )
    model = keras.saving.load_model(model_path, safe_mode=True)
    with open(names_path) as f:
        class_names = json.load(f)
    probabilities = model.predict(tf.constant(args.predict), verbose=0)
    for text, probs in zip(args.predict, probabilities):
        ranked = sorted(zip(class_names, probs), key=lambda t: -t[1])
        scores = ", ".join(f"{name}: {p:.3f}" for name, p in ranked)
        print(f"{ranked[0][0]}\t{scores}\t{text}")
    return probabilities


def run(args, callbacks=()):
    """Runs the example for parsed `args`; raises `UsageError`."""
    if args.predict:
        return predict(args)
    if args.smoke:
        import tensorflow_datasets as tfds

        args.epochs = min(args.epochs, 2)
        args.batch_size = min(args.batch_size, 16)
        args.max_tokens = min(args.max_tokens, 2000)
        with tfds.testing.mock_data(
            num_examples=args.smoke_examples,
            policy=tfds.testing.MockPolicy.USE_CODE,
        ):
            return train(args, callbacks)
    return train(args, callbacks)


def main(argv=None, callbacks=()):
    """Command-line entry point: returns the metrics or probabilities.

    Errors in the arguments or the data print one line and exit with
    status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args, callbacks)
    except UsageError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
