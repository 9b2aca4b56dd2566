"""Tests of examples/text_classification.py (the main job).

The smoke runs use `tfds.testing.mock_data`, so they need neither network
nor data. The slow tests use the prepared copies in `../shared/tfds` (next
to the repository) or `$KERAS_RESEARCH_TFDS_DIR`, and are skipped without.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

# Op determinism has no public switch to turn it off again; the tests that
# enable it (through the example's --deterministic) restore it afterwards so
# that other test modules run as they would alone.
from tensorflow.python.framework import config as tf_config

import keras_research

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "text_classification.py"
SHARED_TFDS = Path(
    os.environ.get("KERAS_RESEARCH_TFDS_DIR", REPO.parent / "shared" / "tfds")
)
METRIC_KEYS = {
    "test_accuracy", "test_loss", "train_examples_per_second",
    "wall_time_seconds", "preprocessing_seconds", "training_seconds",
    "evaluation_seconds", "peak_memory_mb", "class_names", "dataset",
    "num_train_examples", "num_test_examples", "epochs_run_in_this_process",
    "best_val_accuracy", "vocabulary_size", "mock_data",
}
SMOKE = ["--smoke", "--deterministic", "--verbose", "0", "--seed", "3"]
TREC = ["--dataset", "trec", "--label-key", "label-coarse"]
# Every character str.splitlines() splits on.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def load_example():
    if "text_classification_example" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "text_classification_example", EXAMPLE
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["text_classification_example"]


@pytest.fixture(scope="module")
def example():
    enabled = tf_config.is_op_determinism_enabled()
    yield load_example()
    if not enabled:
        tf_config.disable_op_determinism()


@pytest.fixture(scope="module")
def smoke_run(example, tmp_path_factory):
    """One uninterrupted smoke run; its output directory."""
    out = tmp_path_factory.mktemp("smoke")
    metrics = example.main(SMOKE + ["--output-dir", str(out)])
    keras.backend.clear_session()
    return out, metrics


def fresh_process(script, cwd, timeout=300):
    """Runs `script` in a new Python that can import keras_research but not
    the example (its folder is not on sys.path); returns its JSON output."""
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LOAD_AND_PREDICT = """
    import json, sys
    import keras
    import keras_research
    assert not any("examples" in p for p in sys.path), sys.path
    model = keras.saving.load_model({path!r}, safe_mode=True)
    texts = {texts!r}
    probabilities = model.predict(keras.ops.convert_to_tensor(texts),
                                  verbose=0)
    layer = model.get_layer("probabilities")
    print(json.dumps({{"class_names": list(layer.class_names),
                      "predicted": layer.decode(probabilities),
                      "probabilities": probabilities.tolist(),
                      "modules": [m for m in sys.modules
                                  if "text_classification" in m]}}))
"""


def load_elsewhere(path, texts, cwd):
    return fresh_process(
        LOAD_AND_PREDICT.format(path=str(path), texts=list(texts)), cwd)


def test_smoke_run_writes_metrics_model_curves_and_logs(smoke_run):
    out, metrics = smoke_run
    written = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(written)
    assert written["test_accuracy"] == metrics["test_accuracy"]
    assert 0.0 <= written["test_accuracy"] <= 1.0
    assert np.isfinite(written["test_loss"])
    assert written["train_examples_per_second"] > 0
    assert written["class_names"] == ["neg", "pos"]
    assert written["mock_data"] is True
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "training_log.csv").read_text().splitlines()
    assert "jacobian_norm" in log[0] and "val_accuracy" in log[0]
    assert len(log) == 1 + 2  # header and two epochs
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["dataset"] == "imdb_reviews"
    if importlib.util.find_spec("tensorboard") is not None:
        # One TensorBoard folder per run (runs never mix their curves).
        assert run["log_dir"].startswith("logs")
        assert any((out / run["log_dir"]).rglob("events.out.tfevents.*"))
    assert not (out / "backup").exists()  # removed when fit finishes


def test_saved_model_loads_in_a_fresh_process_with_class_names(
        smoke_run, example):
    out, _ = smoke_run
    texts = ["A great, great film!", "", "dull <br /> and long\x85"]
    got = load_elsewhere(out / "model.keras", texts, out)
    assert got["modules"] == []  # the example was not imported
    assert got["class_names"] == ["neg", "pos"]
    expected = keras.saving.load_model(out / "model.keras").predict(
        tf.constant(texts), verbose=0)
    np.testing.assert_allclose(got["probabilities"], expected, rtol=1e-6)
    np.testing.assert_allclose(np.sum(got["probabilities"], 1), 1, rtol=1e-5)
    assert got["predicted"] == [
        ("neg", "pos")[i] for i in np.argmax(expected, 1)]


def test_vocabulary_with_every_line_break_loads_in_a_fresh_process(
        example, tmp_path):
    """The exported model as the example builds it, with a vocabulary whose
    tokens hold every character `str.splitlines()` splits on (Keras's
    `TextVectorization` reads such a vocabulary back split into duplicates
    and refuses to load)."""
    vocabulary = [f"w{i}{c}x" for i, c in enumerate(LINE_BREAKS)]
    vocabulary += ["the\x85", "great", "film", "great film"]
    standardize = keras_research.layers.StandardizeText(name="standardize")
    bag = keras_research.layers.BagOfNgrams(ngrams=2, vocabulary=vocabulary,
                                            name="bag_of_ngrams")
    model = example.build_model(bag.vocabulary_size(), 3)
    exported = example.export_model((standardize, bag), model,
                                    ["a\u2028b", "c", "d"])
    path = tmp_path / "model.keras"
    exported.save(path)
    texts = ["Great film!", "the\x85 w7\x85x", "nothing known"]
    got = load_elsewhere(path, texts, tmp_path)
    assert got["class_names"] == ["a\u2028b", "c", "d"]
    np.testing.assert_allclose(
        got["probabilities"], exported.predict(tf.constant(texts), verbose=0),
        rtol=1e-6)


def test_predict_prints_class_and_probabilities(smoke_run, example, capsys):
    out, _ = smoke_run
    texts = ["what a wonderful movie", "a boring mess"]
    probabilities = example.main(
        ["--output-dir", str(out), "--predict", *texts]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line, text, probs in zip(lines, texts, probabilities):
        label, scores, printed_text = line.split("\t")
        assert label in ("neg", "pos") and printed_text == text
        assert label == ("neg", "pos")[int(np.argmax(probs))]
        assert "neg: " in scores and "pos: " in scores


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of the second epoch, like a killed job."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            raise KeyboardInterrupt("simulated kill")


def interrupted_run(example, argv, out):
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        example.main(argv + ["--output-dir", str(out)],
                     callbacks=[Interrupt()])
    assert (out / "backup").is_dir()
    assert not (out / "model.keras").exists()
    keras.backend.clear_session()


def weights(path):
    return keras.saving.load_model(path, safe_mode=True).get_weights()


def test_interrupted_run_resumes_to_the_same_weights(
        smoke_run, example, tmp_path, capsys):
    reference, _ = smoke_run
    interrupted_run(example, SMOKE, tmp_path)
    capsys.readouterr()
    metrics = example.main(SMOKE + ["--output-dir", str(tmp_path)])
    assert f"Resuming the run in {tmp_path} at epoch 2 of 2" in (
        capsys.readouterr().out)
    assert metrics["epochs_run_in_this_process"] == 1  # only the second
    for resumed, uninterrupted in zip(
        weights(tmp_path / "model.keras"),
        weights(reference / "model.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(resumed, uninterrupted)
    log = (tmp_path / "training_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2  # the first epoch is not run twice
    assert len(list((tmp_path / "logs").iterdir())) == 1  # one run


def snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_another_dataset_into_the_folder_of_a_killed_run(
        example, tmp_path, capsys):
    """As documented: the other run stops (exit 2, one line, what to do)
    and leaves the killed run's files as they were, so that the killed run
    can still be resumed."""
    interrupted_run(example, SMOKE, tmp_path)
    before = snapshot(tmp_path)
    code, err = run_cli(example, capsys,
                        SMOKE + TREC + ["--output-dir", str(tmp_path)])
    assert code == 2 and len(err.splitlines()) == 1
    assert "holds the backup of an unfinished run with another " \
        "configuration (dataset: 'imdb_reviews' there, 'trec' here" in err
    assert "choose another --output-dir, or delete" in err
    assert snapshot(tmp_path) == before
    metrics = example.main(SMOKE + ["--output-dir", str(tmp_path)])
    assert metrics["epochs_run_in_this_process"] == 1


def test_default_output_folders_are_distinct(example):
    cli = example.cli
    argvs = [[], TREC, ["--dataset", "trec", "--label-key", "label-fine"],
             ["--smoke"], TREC + ["--smoke"],
             ["--train-split", "train[:50%]"], ["--dataset", "ag_news_subset"]]
    folders = [cli.parse_args(a, example.DEFAULTS).output_dir for a in argvs]
    assert len(set(folders)) == len(folders), folders
    assert folders[0] == os.path.join("runs", "text_classification",
                                      "imdb_reviews")
    assert folders[1].endswith("trec-label-coarse")


def run_cli(example, capsys, argv):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        example.main(argv)
    err = capsys.readouterr().err.strip()
    return info.value.code, err


BAD_ARGS = [
    (["--dataset", "no_such_dataset_xyz"], "unknown TFDS dataset"),
    (["--dataset", "imdb_reviewz"], "Did you mean: imdb_reviews"),
    (["--dataset", "mnist"], "has no Text feature"),
    (["--dataset", "trec", "--smoke"], "several ClassLabel features"),
    (["--dataset", "trec", "--smoke", "--label-key", "label-medium"],
     "--label-key='label-medium' is not a ClassLabel feature"),
    (["--epochs", "0"], "argument --epochs: must be a positive integer"),
    (["--batch-size", "-2"], "must be a positive integer"),
    (["--learning-rate", "nan"], "--learning-rate: must be a number > 0"),
    (["--jacobian-weight", "inf"], "must be a number >= 0"),
    (["--verbose", "3"], "must be 0, 1 or 2"),
    (["--predict", "some text"], "no trained model"),
    (["--no-download"], "is not prepared in"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGS)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
        example, capsys, tmp_path, argv, message):
    argv = argv + ["--output-dir", str(tmp_path / "out")]
    if "--smoke" not in argv:
        argv += ["--data-dir", str(tmp_path / "tfds"), "--no-download"]
    code, err = run_cli(example, capsys, argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert err.startswith("text_classification.py: error: ")
    assert not (tmp_path / "out").exists()


def run_script(argv, cwd, env=None):
    """Runs the example as a script; returns (code, stderr, seconds, whether
    TensorFlow was imported)."""
    wrapper = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{str(EXAMPLE)!r}] + {list(argv)!r}
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
        finally:
            print("TF" if "tensorflow" in sys.modules else "NO TF")
    """)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", wrapper], cwd=cwd, capture_output=True,
        text=True, timeout=300, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    return (result.returncode, result.stderr.strip(), seconds,
            result.stdout.strip().splitlines()[-1] == "TF")


def test_help_answers_in_under_a_second_without_tensorflow(tmp_path):
    code, _, _, tf_imported = run_script(["--help"], tmp_path)
    assert code == 0 and not tf_imported
    times = []
    for _ in range(3):  # best of 3, on a shared machine
        start = time.perf_counter()
        subprocess.run([sys.executable, str(EXAMPLE), "--help"], cwd=tmp_path,
                       capture_output=True, check=True, timeout=60)
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0, times


@pytest.mark.parametrize("kind", ["truncated", "random", "empty"])
def test_corrupt_model_for_predict(smoke_run, tmp_path, kind):
    out, _ = smoke_run
    data = (out / "model.keras").read_bytes()
    damaged = {"truncated": data[: len(data) // 2],
               "random": np.random.default_rng(0).bytes(5000),
               "empty": b""}[kind]
    (tmp_path / "model.keras").write_bytes(damaged)
    code, err, _, tf_imported = run_script(
        ["--output-dir", str(tmp_path), "--predict", "a text"], tmp_path)
    assert code == 2 and not tf_imported
    assert err == (
        f"text_classification.py: error: {tmp_path / 'model.keras'} is not "
        f"a valid .keras file (truncated or corrupt: "
        f"{err.split('corrupt: ')[1].split(');')[0]}); train again to "
        "rewrite it")


@pytest.mark.parametrize("where", ["/proc/no_such_dir/x", "under_a_file/x"])
def test_unwritable_output_dir_fails_before_loading_data(tmp_path, where):
    (tmp_path / "under_a_file").write_text("")
    code, err, _, tf_imported = run_script(
        ["--output-dir", where, "--data-dir", str(tmp_path / "tfds")],
        tmp_path)
    assert code == 2 and not tf_imported  # before any data or TensorFlow
    assert len(err.splitlines()) == 1
    assert err.startswith(f"text_classification.py: error: --output-dir="
                          f"{where!r} is not ")
    assert not (tmp_path / "tfds").exists()


def test_unreachable_network_fails_fast_and_leaves_nothing(
        example, capsys, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    code, err = run_cli(example, capsys, [
        "--data-dir", str(tmp_path / "tfds"),
        "--output-dir", str(tmp_path / "out")])
    assert time.perf_counter() - start < 30
    assert code == 2 and len(err.splitlines()) == 1
    assert "the network is unreachable" in err and "--data-dir" in err
    leftovers = [p for p in (tmp_path / "tfds").rglob("*") if p.is_file()]
    assert leftovers == [] and not (tmp_path / "out").exists()


def test_failed_download_leaves_no_partial_files(
        example, capsys, tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    class Connection:
        def close(self):
            pass

    def partial_download(builder, *args, **kwargs):
        # What TFDS leaves when its download stops half-way.
        os.makedirs(builder.data_dir)
        downloads = tmp_path / "tfds" / "downloads"
        downloads.mkdir(parents=True)
        (downloads / "aclImdb_v1.tar.gz.tmp.1234").write_bytes(b"partial")
        raise ConnectionError("Connection reset by peer")

    monkeypatch.setattr(socket, "create_connection",
                        lambda *a, **k: Connection())
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        partial_download)
    (tmp_path / "tfds").mkdir()
    code, err = run_cli(example, capsys, [
        "--data-dir", str(tmp_path / "tfds"),
        "--output-dir", str(tmp_path / "out")])
    assert code == 2
    assert err.splitlines()[-1] == (
        "text_classification.py: error: could not download 'imdb_reviews' "
        "(Connection reset by peer); nothing was kept")
    assert list((tmp_path / "tfds").iterdir()) == []


def test_read_log_skips_missing_validation(example, tmp_path):
    # CSVLogger writes "NA" for validation columns of a run without
    # validation data; a replayed epoch appears twice (the last row counts).
    (tmp_path / "training_log.csv").write_text(
        "epoch,accuracy,jacobian_norm,loss,val_accuracy,val_loss\n"
        "0,0.5,2.0,0.7,NA,NA\n"
        "1,0.75,1.5,0.6,NA,NA\n"
        "1,0.8,1.4,0.5,NA,NA\n"
    )
    log = example.cli.read_log(str(tmp_path))
    assert [r["accuracy"] for r in log] == [0.5, 0.8]
    assert log[1]["val_accuracy"] is None


needs_data = pytest.mark.skipif(
    not (SHARED_TFDS / "imdb_reviews").is_dir()
    or not (SHARED_TFDS / "trec").is_dir(),
    reason=f"no prepared imdb_reviews and trec in {SHARED_TFDS}",
)


@needs_data
def test_missing_split(example, capsys, tmp_path):
    code, err = run_cli(example, capsys, [
        "--data-dir", str(SHARED_TFDS), "--no-download", "--test-split",
        "validation", "--output-dir", str(tmp_path)])
    assert code == 2
    assert "has no split --test-split='validation'" in err
    assert "['test', 'train']" in err


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("argv, texts, expected, accuracy", [
    ([], ["A wonderful, moving film.", "Dull, long and badly acted."],
     ["pos", "neg"], 0.85),
    (TREC + ["--batch-size", "64"],
     ["How far is it from Denver to Aspen?", "Who wrote Hamlet?"],
     ["NUM", "HUM"], 0.6),
])
def test_real_data_model_loads_in_a_fresh_process(
        example, tmp_path, argv, texts, expected, accuracy):
    metrics = example.main(argv + [
        "--data-dir", str(SHARED_TFDS), "--no-download", "--epochs", "1",
        "--verbose", "0", "--output-dir", str(tmp_path)])
    assert metrics["test_accuracy"] >= accuracy
    got = load_elsewhere(tmp_path / "model.keras", texts, tmp_path)
    assert got["class_names"] == metrics["class_names"]
    assert got["predicted"] == expected
    vocabulary = keras.saving.load_model(tmp_path / "model.keras").get_layer(
        "bag_of_ngrams").get_vocabulary()
    assert all(t.splitlines() == [t] for t in vocabulary)
