"""Tests of keras_research.factorize (post-hoc SVD compression)."""

import keras
import numpy as np
import pytest

import keras_research
from tests.scopes._helpers import factorized_weights


def _model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(48, activation="relu", name="hidden")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(10, name="out")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for w in model.weights:  # Trained-looking, full-rank weights.
        w.assign(rng.normal(size=w.shape, scale=0.3))
    model.get_layer("bn").moving_variance.assign(np.ones(48) * 2.0)
    return model


def _x():
    return np.random.default_rng(1).normal(size=(4, 8, 8, 3)).astype("float32")


def test_full_rank_reproduces_outputs_and_leaves_original_alone():
    model = _model()
    before = [w.numpy().copy() for w in model.weights]
    everything = lambda layer, name, shape: True  # noqa: E731
    new, report = keras_research.factorize(model, rank=10_000,
                                           filter=everything)
    assert [e["path"] for e in report] == [
        "conv/kernel",
        "hidden/kernel",
        "out/kernel",
    ]
    assert all(e["rank"] == e["full_rank"] for e in report)
    assert all(e["relative_error"] < 1e-6 for e in report)
    np.testing.assert_allclose(new(_x()), model(_x()), rtol=1e-4, atol=1e-4)
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    assert all(type(layer).__module__.startswith("keras.")
               for layer in model.layers)


@pytest.mark.parametrize("rank", [2, 5])
def test_reconstruction_error_matches_discarded_energy(rank):
    model = _model()
    new, report = keras_research.factorize(model, rank=rank, min_size=0)
    weights = factorized_weights(new)
    for entry in report:
        original = model.get_layer(entry["layer"]).kernel.numpy()
        matrix = original.reshape(entry["matrix_shape"]).astype("float64")
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        expected = np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2))
        np.testing.assert_allclose(entry["relative_error"], expected,
                                   rtol=1e-6)
        product = weights[entry["path"]].numpy().reshape(matrix.shape)
        np.testing.assert_allclose(
            product, (u[:, :rank] * s[:rank]) @ vt[:rank], atol=1e-5
        )
        actual = np.linalg.norm(matrix - product) / np.linalg.norm(matrix)
        np.testing.assert_allclose(actual, expected, rtol=1e-4)
        m, n = entry["matrix_shape"]
        assert entry["params_before"] == m * n
        assert entry["params_after"] == rank * (m + n)
    assert report.model_params_after == new.count_params()
    assert report.model_params_before == model.count_params()
    # Other weights (biases, normalization statistics) are copied.
    np.testing.assert_array_equal(
        new.get_layer("bn").moving_variance.numpy(), np.ones(48) * 2.0
    )
    assert "model parameters" in str(report)


def test_energy_picks_the_smallest_sufficient_rank():
    model = _model()
    new, report = keras_research.factorize(model, energy=0.8, min_size=0)
    assert len(report) >= 1
    for entry in report:
        original = model.get_layer(entry["layer"]).kernel.numpy()
        s = np.linalg.svd(original.reshape(entry["matrix_shape"]),
                          compute_uv=False).astype("float64")
        kept = np.cumsum(s**2) / np.sum(s**2)
        assert entry["rank"] == int(np.argmax(kept >= 0.8)) + 1
        assert entry["relative_error"] <= np.sqrt(0.2) + 1e-9


def test_factorized_model_trains_and_saves(tmp_path):
    model = _model()
    new, _ = keras_research.factorize(model, rank=4, min_size=0)
    new.compile(optimizer="adam", loss="mse")
    target = np.random.default_rng(2).normal(size=(4, 10))
    history = new.fit(_x(), target, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    path = tmp_path / "small.keras"
    new.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(_x()), new(_x()))


def test_sequential_models():
    model = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64), keras.layers.Dense(8)]
    )
    new, report = keras_research.factorize(model, rank=4, min_size=0)
    assert [tuple(w.shape) for w in new.weights] == [
        (32, 4), (4, 64), (64,), (64, 4), (4, 8), (8,)
    ]
    assert len(report) == 2


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="must be built"):
        keras_research.factorize(keras.Sequential([keras.layers.Dense(2)]),
                                 rank=1)
    with pytest.raises(ValueError, match="keras.Model"):
        keras_research.factorize(keras.layers.Dense(2), rank=1)
    with pytest.raises(ValueError, match="exactly one"):
        keras_research.factorize(model)
    with pytest.raises(ValueError, match="exactly one"):
        keras_research.factorize(model, rank=2, energy=0.5)
    for energy in (0.0, 1.5, -0.1, "high", True):
        with pytest.raises(ValueError, match="energy"):
            keras_research.factorize(model, energy=energy)
    for rank in (0, -2, 1.5, "2"):
        with pytest.raises(ValueError, match="rank"):
            keras_research.factorize(model, rank=rank)
    with pytest.raises(ValueError, match="filter"):
        keras_research.factorize(model, rank=2, filter=42)
    with pytest.raises(ValueError, match="min_size"):
        keras_research.factorize(model, rank=2, min_size=-5)
