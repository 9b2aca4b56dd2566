"""Command-line plumbing of examples/text_classification.py.

Argument parsing and checks, output folders, offline-safe TFDS downloads and
the resume bookkeeping: nothing here is needed to read the example or to use
its saved model. The module imports no TensorFlow, so that `--help` and
argument errors answer at once; `tfds` is imported only where needed.
"""

import argparse
import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import zipfile

RUNS = os.path.join("runs", "text_classification")
PROG = "text_classification.py"


class UsageError(Exception):
    """A problem with the arguments or the data: one line, exit status 2."""


def check(condition, message):
    if not condition:
        raise UsageError(message)


def number(cast, ok, what):
    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


COUNT = number(int, lambda v: v > 0, "a positive integer")
FLAGS = {  # flag: (default, type, help)
    "--dataset": ("imdb_reviews", str, "TFDS dataset, name[:version]"),
    "--data-dir": (None, str, "TFDS data directory (default: TFDS's own)"),
    "--text-key": (None, str, "text feature (default: the only one)"),
    "--label-key": (None, str, "ClassLabel feature (default: the only one)"),
    "--train-split": ("train", str, "training split (its tail validates)"),
    "--test-split": ("test", str, "split for the test metrics"),
    "--epochs": (None, COUNT, "training epochs"),
    "--batch-size": (None, COUNT, "texts per step"),
    "--learning-rate": (None, number(float, lambda v: v > 0, "a number > 0"),
                        "initial learning rate, decayed linearly to 0"),
    "--jacobian-weight": (None, number(float, lambda v: v >= 0,
                                       "a number >= 0"), "0 disables"),
    "--seed": (0, int, "seed of the weights and the data order"),
    "--verbose": (1, number(int, lambda v: v in (0, 1, 2), "0, 1 or 2"),
                  "Keras verbosity"),
    "--output-dir": (None, str, f"default: {RUNS}/<dataset>[-<options>]"),
}
SWITCHES = {
    "--no-download": "use a prepared copy only, never download",
    "--smoke": "a few steps on tfds.testing.mock_data (random texts)",
    "--deterministic": "enable TensorFlow op determinism",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{PROG}: error: {message}\n")


def parse_args(argv, defaults):
    """The checked arguments; errors exit with status 2 and one line.

    `defaults` holds the example's defaults for the flags whose default here
    is `None` (epochs, batch_size, learning_rate, jacobian_weight).
    """
    parser = ArgumentParser(
        prog=PROG, description="Text classification with keras_research.",
        formatter_class=HelpFormatter)
    for flag, (default, kind, help) in FLAGS.items():
        parser.add_argument(flag, default=default, type=kind, help=help)
    parser.set_defaults(**defaults)
    for flag, help in SWITCHES.items():
        parser.add_argument(flag, action="store_true", help=help)
    parser.add_argument("--predict", nargs="+", metavar="TEXT",
                        help="classify TEXTs with the model of --output-dir")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs = min(args.epochs, 2)
        args.batch_size = min(args.batch_size, 16)
    args.output_dir = args.output_dir or os.path.join(RUNS, run_name(args))
    try:
        if args.predict:
            check_model_file(os.path.join(args.output_dir, "model.keras"))
        else:
            check_output_dir(args.output_dir)
    except UsageError as e:
        parser.error(str(e))
    return args


@contextlib.contextmanager
def quiet_stderr():
    """Hides what C++ code writes to file descriptor 2 (unless it fails)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def run_name(args):
    """The default output folder's name: dataset and non-default options."""
    parts = [args.dataset, args.text_key, args.label_key]
    if (args.train_split, args.test_split) != ("train", "test"):
        parts += [args.train_split, args.test_split]
    parts.append("smoke" if args.smoke else None)
    return re.sub(r"[^\w.-]+", "_", "-".join(p for p in parts if p))


def check_output_dir(path):
    """Fails unless `path` is, or can be made, a writable folder."""
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    check(os.path.isdir(parent),
          f"--output-dir={path!r} is not a folder: {parent} is a file")
    try:
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as e:
        raise UsageError(f"--output-dir={path!r} is not writable: cannot "
                         f"create files in {parent} ({e.strerror})") from None


def check_model_file(path):
    check(os.path.exists(path), f"no trained model {path}: train first (the "
          "same arguments without --predict) or pass its --output-dir")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as e:
        bad = str(e)
    check(bad is None, f"{path} is not a valid .keras file (truncated or "
          f"corrupt: {bad}); train again to rewrite it")


def first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_builder(args):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(args.dataset, data_dir=args.data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        close = difflib.get_close_matches(args.dataset.split(":")[0],
                                          tfds.list_builders(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"unknown TFDS dataset --dataset={args.dataset!r}."
                         f"{hint}") from None
    except Exception as e:  # noqa: BLE001 - e.g. a bad version string
        raise UsageError(f"cannot open --dataset={args.dataset!r}: "
                         f"{first_line(e)}") from None


def find_key(features, key, kind, dataset):
    flag = "--text-key" if kind == "Text" else "--label-key"
    found = [k for k, f in features.items() if type(f).__name__ == kind]
    if key is not None:
        check(key in found, f"{flag}={key!r} is not a {kind} feature of "
              f"{dataset!r}; its {kind} features: {found or 'none'}")
        return key
    check(found, f"dataset {dataset!r} has no {kind} feature (features: "
          f"{list(features)}); this example needs a text and a class label")
    check(len(found) == 1, f"dataset {dataset!r} has several {kind} features "
          f"{found}; choose one with {flag}")
    return found[0]


def prepare(builder, args, host=("storage.googleapis.com", 443)):
    """Downloads the data if needed and possible, leaving no partial files."""
    if builder.is_prepared():
        return
    problem = "--no-download was given" if args.no_download else None
    if not problem and not any(os.environ.get(v) for v in (
            "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY")):
        try:
            socket.create_connection(host, timeout=5).close()
        except OSError as e:
            problem = f"the network is unreachable ({host[0]}: {e})"
    check(not problem, f"dataset {args.dataset!r} is not prepared in "
          f"{builder.data_dir} and {problem}: pass --data-dir with a prepared "
          "copy, run once with network access, or try --smoke (mock data)")
    name = builder.info.full_name  # name/config/version
    root = os.fspath(builder.data_dir)[: -len(name)]
    watched = [os.path.join(root, "downloads"),
               os.path.join(root, name.split("/")[0])]
    before = set(all_paths(watched))
    print(f"Downloading {args.dataset!r} into {root} (TFDS)", file=sys.stderr)
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001 - network and file errors
        for path in sorted(set(all_paths(watched)) - before):
            shutil.rmtree(path, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.remove(path)
        raise UsageError(f"could not download {args.dataset!r} "
                         f"({first_line(e)}); nothing was kept") from None


def all_paths(folders):
    for folder in filter(os.path.exists, folders):
        yield folder
        for parent, names, files in os.walk(folder):
            yield from (os.path.join(parent, n) for n in names + files)


def run_config(args):
    """What a backup must match to be resumed."""
    skip = {"data_dir", "no_download", "deterministic", "verbose", "predict",
            "output_dir"}
    return {k: v for k, v in sorted(vars(args).items()) if k not in skip}


def read_json(path):
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        return json.load(f)
    return {}


def check_backup(args):
    """Whether `--output-dir` holds a backup of this run; exit 2 if of
    another run (restoring it would crash or silently mix two runs)."""
    backup = os.path.join(args.output_dir, "backup")
    if not os.path.isdir(backup):
        return False
    saved = read_json(os.path.join(args.output_dir, "run.json"))
    config, old = run_config(args), saved.get("config", {})
    differs = [f"{k}: {old.get(k)!r} there, {v!r} here"
               for k, v in config.items() if old.get(k) != v]
    check(not differs, f"--output-dir={args.output_dir!r} holds the backup "
          f"of an unfinished run with another configuration ("
          f"{'; '.join(differs[:3])}): rerun that run's own command to "
          f"finish it, choose another --output-dir, or delete {backup} to "
          "start afresh")
    done = read_json(os.path.join(backup, "training_metadata.json"))
    print(f"Resuming the run in {args.output_dir} at epoch "
          f"{done.get('epoch', 0) + 1} of {args.epochs} (from its backup)")
    return True


def start_run(args, bag, resuming):
    """Writes run.json (the log folder of a fresh run); returns that folder."""
    path = os.path.join(args.output_dir, "run.json")
    vocabulary = hashlib.sha256(json.dumps(bag.get_vocabulary()).encode())
    if resuming:
        saved = read_json(path)
        check(saved.get("vocabulary_sha256") == vocabulary.hexdigest(),
              f"the backup in {args.output_dir!r} was trained with another "
              "vocabulary (the data changed?): delete "
              f"{os.path.join(args.output_dir, 'backup')} to start afresh")
        return saved["log_dir"]
    os.makedirs(args.output_dir, exist_ok=True)
    for stale in ("training_log.csv", "best.weights.h5"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(args.output_dir, stale))
    log_dir = os.path.join("logs", time.strftime("%Y%m%d-%H%M%S"))
    with open(path, "w") as f:
        json.dump(dict(config=run_config(args), log_dir=log_dir,
                       vocabulary_sha256=vocabulary.hexdigest()), f, indent=1)
    return log_dir


def read_log(output_dir):
    """The CSV log's rows as numbers (the last row of a replayed epoch)."""
    import csv

    rows = {}
    with contextlib.suppress(FileNotFoundError):
        with open(os.path.join(output_dir, "training_log.csv")) as f:
            for row in csv.DictReader(f):
                row = {k: float(v) if v not in ("", "NA") else None
                       for k, v in row.items()}
                rows[int(row["epoch"])] = row
    return [rows[e] for e in sorted(rows)]


