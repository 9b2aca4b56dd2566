"""Tests of examples/text_classification.py (the main job).

The smoke runs use `tfds.testing.mock_data`, so they need neither network
nor data. The IMDB test uses the prepared copy in `../shared/tfds` (next to
the repository) or `$KERAS_RESEARCH_TFDS_DIR`, and is skipped without it.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

# Op determinism has no public switch to turn it off again; the tests that
# enable it (through the example's --deterministic) restore it afterwards so
# that other test modules run as they would alone.
from tensorflow.python.framework import config as tf_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "text_classification.py"
SHARED_TFDS = Path(
    os.environ.get("KERAS_RESEARCH_TFDS_DIR", REPO.parent / "shared" / "tfds")
)
METRIC_KEYS = {
    "test_accuracy",
    "test_loss",
    "train_examples_per_second",
    "wall_time_seconds",
}
SMOKE = ["--smoke", "--deterministic", "--verbose", "0", "--seed", "3"]


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


def model_weights(path):
    return keras.saving.load_model(path, safe_mode=True).get_weights()


def test_smoke_run_writes_metrics_model_curves_and_logs(smoke_run):
    out, metrics = smoke_run
    written = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(written)
    assert written["test_accuracy"] == metrics["test_accuracy"]
    assert 0.0 <= written["test_accuracy"] <= 1.0
    assert np.isfinite(written["test_loss"])
    assert written["train_examples_per_second"] > 0
    assert written["class_names"] == ["neg", "pos"]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (out / "training_log.csv").read_text().splitlines()
    assert "jacobian_norm" in log[0] and "val_accuracy" in log[0]
    assert len(log) == 1 + 2  # header and two epochs
    assert (out / "checkpoints" / "best.weights.h5").exists()
    if importlib.util.find_spec("tensorboard") is not None:
        # The example skips TensorBoard (and says so) without the package.
        assert any((out / "logs").rglob("events.out.tfevents.*"))
    assert not (out / "backup").exists()  # removed when fit finishes


def test_saved_model_takes_raw_strings(smoke_run, example):
    out, _ = smoke_run
    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    probabilities = model.predict(
        tf.constant(["A great, great film!", "", "dull <br /> and long"]),
        verbose=0,
    )
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # No trace of padding on the model side: the text becomes ragged ids.
    ids = model.get_layer("unique_ids")(
        model.get_layer("text_vectorization")(
            model.get_layer("standardize_text")(tf.constant(["a b a", "b"]))
        )
    )
    assert isinstance(ids, tf.RaggedTensor)
    assert ids.row_lengths().numpy().tolist()[1] <= 1


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
        np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


class Interrupt(keras.callbacks.Callback):
    """Raises in the middle of the second epoch, like a killed job."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_run_resumes_to_the_same_weights(
    smoke_run, example, tmp_path
):
    reference, _ = smoke_run
    argv = SMOKE + ["--output-dir", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt, match="simulated kill"):
        example.main(argv, callbacks=[Interrupt()])
    assert (tmp_path / "backup").is_dir()
    assert not (tmp_path / "model.keras").exists()
    keras.backend.clear_session()

    metrics = example.main(argv)
    assert metrics["epochs_run_in_this_process"] == 1  # only the second
    for resumed, uninterrupted in zip(
        model_weights(tmp_path / "model.keras"),
        model_weights(reference / "model.keras"),
        strict=True,
    ):
        np.testing.assert_array_equal(resumed, uninterrupted)
    log = (tmp_path / "training_log.csv").read_text().splitlines()
    assert len(log) == 1 + 2  # the first epoch is not run twice


def run_cli(example, capsys, argv):
    with pytest.raises(SystemExit) as info:
        example.main(argv)
    err = capsys.readouterr().err.strip()
    return info.value.code, err


BAD_ARGS = [
    (["--dataset", "no_such_dataset_xyz"], "unknown TFDS dataset"),
    (["--dataset", "imdb_reviewz"], "Did you mean: imdb_reviews"),
    (["--dataset", "mnist"], "has no Text feature"),
    (["--dataset", "trec", "--smoke"], "several ClassLabel features"),
    (
        ["--dataset", "trec", "--smoke", "--label-key", "label-medium"],
        "--label-key='label-medium' is not a ClassLabel feature",
    ),
    (["--rank", "0"], "argument --rank: must be a positive integer"),
    (["--rank", "-2"], "argument --rank: must be a positive integer"),
    (["--rank", "17", "--smoke"], "--rank=17 exceeds"),
    (["--validation-fraction", "1.5"], "must be in [0, 1)"),
    (["--learning-rate", "nan"], "--learning-rate: must be a finite"),
    (["--predict", "some text"], "no trained model"),
]


@pytest.mark.parametrize("argv, message", BAD_ARGS)
def test_bad_input_is_one_line_and_exit_code_2(
    example, capsys, tmp_path, argv, message
):
    argv = argv + ["--output-dir", str(tmp_path / "out")]
    if "--smoke" not in argv:
        argv += ["--data-dir", str(tmp_path / "tfds"), "--no-download"]
    code, err = run_cli(example, capsys, argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert err.startswith("text_classification.py: error: ")


def test_offline_without_data_says_what_to_do(example, capsys, tmp_path):
    code, err = run_cli(
        example,
        capsys,
        [
            "--data-dir",
            str(tmp_path / "tfds"),
            "--no-download",
            "--output-dir",
            str(tmp_path / "out"),
        ],
    )
    assert code == 2
    assert not (tmp_path / "out").exists()  # nothing written on errors
    assert "not prepared" in err
    assert "--data-dir" in err and "--smoke" in err


@pytest.mark.skipif(
    not (SHARED_TFDS / "imdb_reviews").is_dir(),
    reason=f"no prepared imdb_reviews in {SHARED_TFDS}",
)
def test_missing_split(example, capsys, tmp_path):
    code, err = run_cli(
        example,
        capsys,
        [
            "--data-dir",
            str(SHARED_TFDS),
            "--no-download",
            "--test-split",
            "validation",
            "--output-dir",
            str(tmp_path),
        ],
    )
    assert code == 2
    assert "has no split --test-split='validation'" in err
    assert "['test', 'train']" in err


def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--dataset", "no_such_dataset_xyz"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TFDS_DATA_DIR": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("text_classification.py: error: unknown TFDS")


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_TFDS / "imdb_reviews").is_dir(),
    reason=f"no prepared imdb_reviews in {SHARED_TFDS}",
)
def test_imdb_short_run_reaches_85_percent(example, tmp_path):
    metrics = example.main(
        [
            "--data-dir",
            str(SHARED_TFDS),
            "--no-download",
            "--epochs",
            "1",
            "--verbose",
            "0",
            "--output-dir",
            str(tmp_path),
        ]
    )
    assert metrics["num_train_examples"] == 22_500
    assert metrics["num_test_examples"] == 25_000
    assert metrics["test_accuracy"] >= 0.85


def test_curves_and_best_value_skip_missing_validation(example, tmp_path):
    # CSVLogger writes "NA" for validation columns of a run without
    # validation data.
    log = tmp_path / "training_log.csv"
    log.write_text(
        "epoch,accuracy,jacobian_norm,loss,val_accuracy,val_loss\n"
        "0,0.5,2.0,0.7,NA,NA\n"
        "1,0.75,1.5,0.6,NA,NA\n"
        "1,0.8,1.4,0.5,NA,NA\n"  # a replayed epoch: the last row counts
    )
    assert example.best_logged(log, "accuracy") == 0.8
    assert example.best_logged(log, "val_accuracy") is None
    assert len(example.read_log(log)) == 2
    png = tmp_path / "curves.png"
    assert example.plot_curves(log, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
