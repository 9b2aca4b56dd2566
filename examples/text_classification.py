"""
Title: Text classification with keras_research
Description: A fastText-style classifier of raw strings that loads anywhere.

Trains a classifier on any TFDS dataset with a text and a class label (IMDB
reviews by default) with every keras_research component: each text becomes
the *set* of its word and bigram ids, kept ragged (no padding), averaged by
`RaggedEmbeddingBag`, then a low-rank `FactorizedDense` and a linear head,
trained by the XLA-fused `Adam` with `JacobianRegularizer` (fastText: Joulin
et al., 2016, arXiv:1607.01759). The saved `model.keras` takes raw strings,
returns class probabilities and carries its class names; it loads in any
program that imports `keras_research`.

    python examples/text_classification.py             # IMDB, ~1 minute
    python examples/text_classification.py --predict "A wonderful film."
    python examples/text_classification.py --dataset trec --label-key label-coarse
    python examples/text_classification.py --data-dir DIR --no-download
    python examples/text_classification.py --smoke     # mock data, seconds

Outputs go to `runs/text_classification/<dataset>` (or `--output-dir`):
`model.keras`, `metrics.json`, `curves.png`, `training_log.csv`,
`best.weights.h5`, TensorBoard `logs/<run start>/`, `backup/` (while
training). A killed run started again with the same command resumes
bit-identically; a backup of a run with another configuration is never
restored (exit status 2 and what to do). Errors in the arguments or the
data print one line and exit with status 2 before any work.
"""  # noqa: E501

"""
## Setup

The arguments are checked first: `--help` and argument errors answer before
TensorFlow loads, and TensorFlow's start-up lines are silenced.
"""

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _text_classification_cli as cli  # noqa: E402  (no TensorFlow)

MAX_TOKENS = 200_000  # words and bigrams, counting the out-of-vocabulary id
NGRAMS = 2
EMBEDDING_DIM = 16
HIDDEN_UNITS = 16
RANK = 4
VALIDATION_FRACTION = 0.1
DEFAULTS = dict(epochs=3, batch_size=512, learning_rate=0.03,
                jacobian_weight=0.001)  # see --help for the others

if __name__ == "__main__":
    cli.parse_args(None, DEFAULTS)  # --help, bad arguments: before TF loads

with cli.quiet_stderr():  # CUDA probing and oneDNN lines
    import tensorflow as tf

    tf.config.list_physical_devices()
import keras  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

import keras_research  # noqa: E402

AUTOTUNE = tf.data.AUTOTUNE

"""
## Load the data

Any TFDS dataset with one `Text` and one `ClassLabel` feature works (or name
them with `--text-key` / `--label-key`). TFDS shuffles a dataset when it
prepares it, so the tail of the training split is a fair validation set.
"""


def load_data(args):
    """Raw `(text, label)` datasets for training, validation and test."""
    builder = cli.open_builder(args)
    features = builder.info.features
    text_key = cli.find_key(features, args.text_key, "Text", args.dataset)
    label_key = cli.find_key(features, args.label_key, "ClassLabel",
                             args.dataset)
    if not args.smoke:
        cli.prepare(builder, args)
    splits = dict(builder.info.splits)  # none for mock data

    def read(split, flag):
        cli.check(not splits or split.split("[")[0] in splits,
                  f"dataset {args.dataset!r} has no split {flag}={split!r}; "
                  f"its splits: {sorted(splits)}")
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except Exception as e:  # noqa: BLE001 - bad slicing syntax etc.
            raise cli.UsageError(f"cannot read {flag}={split!r}: "
                                 f"{cli.first_line(e)}") from None
        return ds.map(lambda ex: (ex[text_key], ex[label_key]), AUTOTUNE)

    train = read(args.train_split, "--train-split")
    test = read(args.test_split, "--test-split")
    n = count(train, splits, args.train_split)
    n_val = int(round(n * VALIDATION_FRACTION))
    cli.check(n - n_val >= 1, f"--train-split={args.train_split!r} has "
              f"{n} examples: too few")
    info = dict(dataset=builder.info.full_name, text_key=text_key,
                label_key=label_key, class_names=features[label_key].names,
                num_train_examples=n - n_val, num_validation_examples=n_val,
                num_test_examples=count(test, splits, args.test_split))
    return train.take(n - n_val), train.skip(n - n_val), test, info


def count(ds, splits, split):
    if split in splits:
        return splits[split].num_examples
    return int(ds.reduce(tf.constant(0, tf.int64), lambda c, _: c + 1))


"""
## Prepare the data

`StandardizeText` lowercases, turns HTML tags and every kind of line break
into spaces and strips punctuation (`!` and `?` stay, as words).
`BagOfNgrams` learns the `MAX_TOKENS` most frequent words and bigrams of the
training part and turns each text into the set of its ids, ragged. The
training part is vectorized once and kept in memory; each epoch gathers
batches in an order that depends on `(seed, epoch)` alone, so a resumed run
replays an interrupted epoch exactly.
"""


def make_text_layers(train_texts, args):
    standardize = keras_research.layers.StandardizeText(name="standardize")
    bag = keras_research.layers.BagOfNgrams(
        max_tokens=2000 if args.smoke else MAX_TOKENS, ngrams=NGRAMS,
        name="bag_of_ngrams")
    bag.adapt(train_texts.batch(2048).map(standardize, AUTOTUNE))
    return standardize, bag


def vectorize(ds, text_layers, batch_size):
    standardize, bag = text_layers
    return ds.batch(batch_size).map(lambda x, y: (bag(standardize(x)), y),
                                    AUTOTUNE, deterministic=True)


def epoch_batches(ds, batch_size, seed, epoch):
    """`ds` in memory, in shuffled batches that depend on `(seed, epoch)`."""
    ids, labels = (tf.concat(t, 0) for t in zip(*ds.prefetch(AUTOTUNE)))
    n = int(labels.shape[0])

    def order(_):
        key = tf.stack([tf.constant(seed, tf.int64), epoch.read_value()])
        return tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(n), seed=key))

    steps = tf.data.experimental.assert_cardinality(-(-n // batch_size))
    return (tf.data.Dataset.range(1).flat_map(order).batch(batch_size)
            .map(lambda i: (tf.gather(ids, i), tf.gather(labels, i)),
                 AUTOTUNE, deterministic=True)
            .apply(steps).prefetch(AUTOTUNE))


"""
## Build the model and train it

The ids of a text are averaged by `RaggedEmbeddingBag`, then pass a low-rank
`FactorizedDense` and a linear head. The fused `Adam` trains it, and
`JacobianRegularizer` penalizes the Jacobian of the logits with respect to
the averaged embedding (its `jacobian_norm` shows in the progress bar).
"""


def build_model(vocabulary_size, num_classes):
    ids = keras.Input(shape=(None,), dtype="int64", ragged=True, name="ids")
    x = keras_research.layers.RaggedEmbeddingBag(
        vocabulary_size, EMBEDDING_DIM, combiner="mean",
        name="embedding_bag")(ids)
    x = keras_research.layers.FactorizedDense(
        HIDDEN_UNITS, rank=RANK, name="factorized_dense")(x)
    logits = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(ids, logits, name="bag_of_ngrams_classifier")


def compile_and_fit(model, train_ds, val_ds, args, callbacks):
    schedule = keras.optimizers.schedules.PolynomialDecay(
        args.learning_rate, len(train_ds) * args.epochs, 0.0)
    model.compile(
        optimizer=keras_research.optimizers.Adam(learning_rate=schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    if args.jacobian_weight:
        callbacks = [keras_research.callbacks.JacobianRegularizer(
            args.jacobian_weight, method="exact", wrt="embedding_bag"),
            *callbacks]
    model.fit(train_ds, validation_data=val_ds, epochs=args.epochs,
              callbacks=callbacks, verbose=args.verbose, shuffle=False)


def train(args, callbacks=()):
    """Loads, prepares, trains, evaluates, exports; returns the metrics."""
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    resuming = cli.check_backup(args)  # before any data is loaded
    train_raw, val_raw, test_raw, info = load_data(args)
    text_layers = make_text_layers(train_raw.map(lambda x, y: x), args)
    log_dir = cli.start_run(args, text_layers[1], resuming)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    train_ds = epoch_batches(vectorize(train_raw, text_layers, 1024),
                             args.batch_size, args.seed, epoch)
    val_ds = None
    if info["num_validation_examples"]:
        val_ds = vectorize(val_raw, text_layers, args.batch_size).cache()
    timer = Timer(preprocessing_seconds=time.perf_counter() - start)

    model = build_model(text_layers[1].vocabulary_size(),
                        len(info["class_names"]))
    compile_and_fit(model, train_ds, val_ds, args, [
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, _: epoch
                                       .assign(e)),
        *run_callbacks(args, log_dir, "val_accuracy" if val_ds else
                       "accuracy"), timer, *callbacks])
    test_ds = vectorize(test_raw, text_layers, args.batch_size)
    return evaluate(model, text_layers, test_ds, info, timer, args, start)


def run_callbacks(args, log_dir, monitor):
    """CSV log, best weights, backups (until fit ends), TensorBoard logs."""
    out = args.output_dir
    best = [r[monitor] for r in cli.read_log(out) if r.get(monitor)]
    callbacks = [
        # Before the backup, so a resumed run has the row of every epoch.
        keras.callbacks.CSVLogger(os.path.join(out, "training_log.csv"),
                                  append=True),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, "best.weights.h5"), monitor, mode="max",
            save_best_only=True, save_weights_only=True,
            initial_value_threshold=max(best, default=None)),
        # Two backups: a kill while one is written leaves the other.
        keras.callbacks.BackupAndRestore(os.path.join(out, "backup"),
                                         double_checkpoint=True)]
    if importlib.util.find_spec("tensorboard") is None:
        print("no TensorBoard logs (pip install tensorboard)", file=sys.stderr)
    else:
        callbacks.append(keras.callbacks.TensorBoard(
            os.path.join(out, log_dir), profile_batch=0))
    return callbacks


class Timer(keras.callbacks.Callback):
    """Training seconds (without validation) and epochs run here."""

    def __init__(self, **timings):
        super().__init__()
        self.timings = dict(timings, training_seconds=0.0)
        self.epochs_run, self._start = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if self._start is not None:
            elapsed = time.perf_counter() - self._start
            self.timings["training_seconds"] += elapsed
        self._start = None

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()
        self.epochs_run += 1


"""
## Evaluate

Test metrics are those of the final model. With `--smoke` they are measured
on random mock data and say nothing about the model.
"""


def evaluate(model, text_layers, test_ds, info, timer, args, start):
    t0 = time.perf_counter()
    results = model.evaluate(test_ds.prefetch(AUTOTUNE), return_dict=True,
                             verbose=0)
    path = os.path.join(args.output_dir, "model.keras")
    export_model(text_layers, model, info["class_names"]).save(path)
    seconds = timer.timings["training_seconds"]
    log = cli.read_log(args.output_dir)
    metrics = dict(
        test_accuracy=float(results["accuracy"]),
        test_loss=float(results["loss"]), mock_data=args.smoke,
        best_val_accuracy=max((r.get("val_accuracy") or 0 for r in log),
                              default=None),
        train_examples_per_second=info["num_train_examples"]
        * timer.epochs_run / seconds if seconds else None,
        wall_time_seconds=time.perf_counter() - start,
        evaluation_seconds=time.perf_counter() - t0, **timer.timings,
        epochs_run_in_this_process=timer.epochs_run,
        peak_memory_mb=resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024,
        vocabulary_size=text_layers[1].vocabulary_size(), **info,
        model_path=path, args={k: v for k, v in vars(args).items()
                               if k != "predict"},
        tensorflow_version=tf.__version__, keras_version=keras.__version__)
    with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    plot_curves(log, metrics, args)
    mock = " ON MOCK DATA (--smoke: random texts)" if args.smoke else ""
    print(f"test accuracy {metrics['test_accuracy']:.4f}{mock}, wall time "
          f"{metrics['wall_time_seconds']:.1f} s, peak memory "
          f"{metrics['peak_memory_mb']:.0f} MB; outputs in {args.output_dir}")
    return metrics


def plot_curves(log, metrics, args):
    """curves.png: loss, accuracy and Jacobian norm per epoch."""
    if not log or importlib.util.find_spec("matplotlib") is None:
        return print("no curves.png (pip install matplotlib)", file=sys.stderr)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    names = [m for m in ("loss", "accuracy", "jacobian_norm") if m in log[0]]
    fig, axes = pyplot.subplots(1, len(names), figsize=(4.5 * len(names), 4),
                                squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, style in ((name, "o-"), ("val_" + name, "s--")):
            if all(r.get(key) is not None for r in log):
                ax.plot([r["epoch"] + 1 for r in log], [r[key] for r in log],
                        style, label="validation" if "val_" in key else
                        "training")
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.legend()
    mock = " (mock data)" if args.smoke else ""
    fig.suptitle(f"{metrics['dataset']}: test accuracy "
                 f"{metrics['test_accuracy']:.2%}{mock}")
    fig.text(0.01, 0.01, "The training loss includes the Jacobian penalty "
             f"(weight {args.jacobian_weight}); the validation loss does not.",
             fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(os.path.join(args.output_dir, "curves.png"), dpi=100)
    pyplot.close(fig)


"""
## Use the trained model

The exported model takes raw strings: its first layers are the text
preprocessing, its last (`ClassProbabilities`) carries the class names.
Anywhere, `import keras_research` and then
`keras.saving.load_model("model.keras", safe_mode=True)` loads it (without
the import: `TypeError: ... Could not locate class 'StandardizeText'`).
"""


def export_model(text_layers, model, class_names):
    text = keras.Input(shape=(), dtype="string", name="text")
    standardize, bag = text_layers
    probabilities = keras_research.layers.ClassProbabilities(
        class_names, name="probabilities")(model(bag(standardize(text))))
    return keras.Model(text, probabilities, name="text_classifier")


def predict(args):
    path = os.path.join(args.output_dir, "model.keras")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
        class_names = model.get_layer("probabilities").class_names
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file
        raise cli.UsageError(
            f"cannot load {path}: {cli.first_line(e)}") from None
    probabilities = model.predict(tf.constant(args.predict), verbose=0)
    for text, probs in zip(args.predict, probabilities):
        ranked = sorted(zip(class_names, probs), key=lambda t: -t[1])
        scores = ", ".join(f"{name}: {p:.3f}" for name, p in ranked)
        print(f"{ranked[0][0]}\t{scores}\t{text}")
    return probabilities


def main(argv=None, callbacks=()):
    """Runs the example: the metrics dict, or the probabilities of
    `--predict`. Errors print one line and exit with status 2."""
    args = cli.parse_args(argv, DEFAULTS)
    try:
        if args.predict:
            return predict(args)
        if not args.smoke:
            return train(args, callbacks)
        print("--smoke: random mock texts; its accuracy means nothing")
        with tfds.testing.mock_data(num_examples=64,
                                    policy=tfds.testing.MockPolicy.USE_CODE):
            return train(args, callbacks)
    except cli.UsageError as e:
        print(f"{cli.PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
