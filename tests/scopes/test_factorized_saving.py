"""Saving and loading models built under keras_research.factorized_scope."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest

import keras_research
from keras_research.testing import run_model_saving_test
from tests.scopes._helpers import factorized_weights

REPO = pathlib.Path(__file__).resolve().parents[2]


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(size=(4, 6, 16)).astype("float32"),
        rng.integers(0, 60, (4, 6)),
    ]


def build_model(rank=4):
    """Dense, MultiHeadAttention, Conv1D, Embedding, EinsumDense."""
    with keras_research.factorized_scope(rank=rank, min_size=0):
        features = keras.Input((6, 16), name="features")
        ids = keras.Input((6,), dtype="int32", name="ids")
        x = keras.layers.Dense(32, activation="relu", name="dense")(features)
        x = keras.layers.MultiHeadAttention(2, 8, name="mha")(x, x)
        x = keras.layers.Conv1D(24, 3, padding="same", name="conv")(x)
        e = keras.layers.Embedding(60, 24, name="embedding")(ids)
        x = keras.layers.Add()([x, e])
        x = keras.layers.EinsumDense(
            "abc,cd->abd", output_shape=(None, 8), name="einsum"
        )(x)
        x = keras.layers.GlobalAveragePooling1D()(x)
        outputs = keras.layers.Dense(20, name="head")(x)
    return keras.Model([features, ids], outputs)


def _targets():
    return np.random.default_rng(9).normal(size=(4, 20)).astype("float32")


def test_keras_file_records_the_factorization(tmp_path):
    model = build_model()
    path = tmp_path / "model.keras"
    model.save(path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    layers = {layer["name"]: layer for layer in config["config"]["layers"]}
    mha = layers["mha"]
    assert mha["registered_name"] == "keras_research>FactorizedLayer"
    assert mha["config"]["layer"]["class_name"] == "MultiHeadAttention"
    assert mha["config"]["factorized"] == {
        "query/kernel": 4,
        "key/kernel": 4,
        "value/kernel": 4,
        "attention_output/kernel": 4,
    }
    assert layers["embedding"]["config"]["factorized"] == {"embeddings": 4}


def test_run_model_saving_test(tmp_path):
    model = build_model()
    model(_inputs())
    run_model_saving_test(model, _inputs())


@pytest.mark.slow  # Starts a second Python process with TensorFlow.
def test_keras_file_in_a_fresh_process(tmp_path):
    """safe_mode=True, no custom_objects, bit-exact factors."""
    model = build_model()
    model.compile(optimizer="adam", loss="mse")
    model.fit(_inputs(), _targets(), epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    np.savez(
        tmp_path / "expected.npz",
        output=keras.ops.convert_to_numpy(model(_inputs())),
        **{
            w.path.replace("/", "|"): keras.ops.convert_to_numpy(w)
            for w in model.weights
        },
    )
    script = textwrap.dedent(
        f"""
        import numpy as np
        import keras
        import keras_research  # noqa: F401  registers the loader
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(4, 6, 16)).astype("float32"),
                  rng.integers(0, 60, (4, 6))]
        model = keras.saving.load_model({str(path)!r}, safe_mode=True)
        expected = np.load({str(tmp_path / "expected.npz")!r})
        weights = {{w.path.replace("/", "|"): np.asarray(w)
                    for w in model.weights}}
        assert sorted(weights) == sorted(k for k in expected if k != "output")
        for key, value in weights.items():
            assert np.array_equal(value, expected[key]), key
        assert np.array_equal(np.asarray(model(inputs)), expected["output"])
        assert any(k.endswith("kernel_left") for k in weights)
        model.fit(inputs, rng.normal(size=(4, 20)), epochs=1, verbose=0)
        print("LOADED-OK")
        """
    )
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "LOADED-OK" in result.stdout, result.stderr[-3000:]


def test_save_weights_load_weights_bit_exact(tmp_path):
    model = build_model()
    model.compile(optimizer="adam", loss="mse")
    model.fit(_inputs(), _targets(), epochs=2, verbose=0)
    path = str(tmp_path / "model.weights.h5")
    model.save_weights(path)
    fresh = build_model()
    fresh.load_weights(path)
    for a, b in zip(model.weights, fresh.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(model(_inputs()), fresh(_inputs()))


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("interrupted")


def _small_model():
    with keras_research.factorized_scope(rank=4, min_size=0):
        ids = keras.Input((6,), dtype="int32")
        x = keras.layers.Embedding(60, 24)(ids)
        x = keras.layers.Conv1D(24, 3)(x)
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(20)(x)
    return keras.Model(ids, outputs)


def _train(backup_dir, interrupt_at=None, epochs=4, seed=42):
    keras.utils.set_random_seed(seed)
    model = _small_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    callbacks = [keras.callbacks.BackupAndRestore(str(backup_dir))]
    if interrupt_at is not None:
        callbacks.append(_Interrupt(interrupt_at))
    model.history_epochs = model.fit(
        _inputs()[1],
        _targets(),
        epochs=epochs,
        batch_size=2,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    ).epoch
    return model


def test_backup_and_restore_resumes_like_an_uninterrupted_run(tmp_path):
    uninterrupted = _train(tmp_path / "a")
    with pytest.raises(RuntimeError, match="interrupted"):
        _train(tmp_path / "b", interrupt_at=2)
    # Another seed: only a restore of the backup can give equal weights.
    resumed = _train(tmp_path / "b", seed=7)
    assert resumed.history_epochs == [2, 3]
    for a, b in zip(uninterrupted.weights, resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_full_rank_weights_load_as_truncated_svd(tmp_path):
    plain = keras.Sequential(
        [keras.Input((12,)), keras.layers.Dense(10, name="d")]
    )
    kernel = np.random.default_rng(3).normal(size=(12, 10))
    plain.layers[0].kernel.assign(kernel)
    plain.layers[0].bias.assign(np.arange(10.0))
    path = str(tmp_path / "plain.weights.h5")
    plain.save_weights(path)
    with keras_research.factorized_scope(rank=3, min_size=0):
        model = keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(10, name="d")]
        )
    with pytest.warns(UserWarning, match="relative reconstruction error"):
        model.load_weights(path)
    u, s, vt = np.linalg.svd(kernel, full_matrices=False)
    (weight,) = factorized_weights(model).values()
    np.testing.assert_allclose(
        weight.numpy(), (u[:, :3] * s[:3]) @ vt[:3], atol=1e-5
    )
    np.testing.assert_array_equal(model.layers[0].bias.numpy(), np.arange(10))


def test_incompatible_weights_fail_clearly(tmp_path):
    small = build_model(rank=2)
    path = str(tmp_path / "rank2.weights.h5")
    small.save_weights(path)
    with pytest.raises(ValueError, match="cannot load"):
        build_model(rank=4).load_weights(path)


@pytest.mark.parametrize(
    "factory",
    [
        lambda: keras.layers.LSTM(16),
        lambda: keras.layers.Bidirectional(keras.layers.GRU(16)),
        lambda: keras.layers.TimeDistributed(keras.layers.Dense(24)),
    ],
    ids=["lstm", "bidirectional_gru", "time_distributed_dense"],
)
def test_layers_that_rebuild_their_sublayers(factory):
    """Cells and wrapped layers are rebuilt by their parent's config."""
    with keras_research.factorized_scope(rank=4, min_size=0):
        inputs = keras.Input((5, 32))
        model = keras.Model(inputs, factory()(inputs))
    assert any(w.path.endswith("kernel_left") for w in model.weights)
    x = np.random.default_rng(0).normal(size=(2, 5, 32)).astype("float32")
    run_model_saving_test(model, x)


@keras.saving.register_keras_serializable(package="keras_research_tests")
class TwoDenseModel(keras.Model):
    """A subclassed model: sublayers made in `__init__`, used in `call`."""

    def __init__(self, units=64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="relu")
        self.out = keras.layers.Dense(units)

    def call(self, x):
        return self.out(self.hidden(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_subclassed_model_loads_without_a_scope(tmp_path):
    """Keras builds it by tracing `call`; the record is replayed then."""
    x = np.random.default_rng(0).normal(size=(3, 64)).astype("float32")
    with keras_research.factorized_scope(rank=8, min_size=0):
        model = TwoDenseModel()
        model(x)
    path = tmp_path / "subclassed.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert [tuple(w.shape) for w in loaded.weights] == [
        (64, 8), (8, 64), (64,), (64, 8), (8, 64), (64,)
    ]
    np.testing.assert_array_equal(loaded(x), model(x))
    assert not loaded.__dict__["_kr_pending"]
