"""Shared checks for models built under `factorized_scope`."""

import keras
import numpy as np

from keras_research.scopes._factorized_weight import FactorizedWeight


def factorized_weights(model):
    """`{path: FactorizedWeight}` over every layer of `model`."""
    found = {}
    for layer in model._flatten_layers(include_self=True):
        for weight in layer.__dict__.get("_kr_factorized", {}).values():
            assert isinstance(weight, FactorizedWeight)
            found[weight.path] = weight
    return found


def load_merged(factorized_model, plain_model):
    """Gives `plain_model` the factorized model's weights, factors merged.

    Each factorized weight becomes `reshape(left @ right, shape)` and every
    other weight is copied, matched by path.
    """
    products = factorized_weights(factorized_model)
    others = {w.path: w for w in factorized_model.weights}
    for variable in plain_model.weights:
        if variable.path in products:
            variable.assign(products[variable.path].numpy())
        else:
            variable.assign(others[variable.path])
    return products


def assert_factorized_like(factorized_model, plain_model, rank_of):
    """No full-size weight; parameter count is what the factors imply.

    Args:
        rank_of: `(path, shape) -> rank or None`, the expected rank of
            each weight of the plain model (None: not factorized).
    """
    factorized_paths = {
        w.path: tuple(w.shape) for w in factorized_model.weights
    }
    expected_params = 0
    num_factorized = 0
    for variable in plain_model.weights:
        shape = tuple(variable.shape)
        rank = rank_of(variable.path, shape)
        if rank is None:
            assert factorized_paths[variable.path] == shape
            expected_params += int(np.prod(shape))
            continue
        num_factorized += 1
        m, n = int(np.prod(shape[:-1])), shape[-1]
        assert variable.path not in factorized_paths, variable.path
        assert factorized_paths[variable.path + "_left"] == (m, rank)
        assert factorized_paths[variable.path + "_right"] == (rank, n)
        expected_params += rank * (m + n)
    assert factorized_model.count_params() == expected_params
    assert num_factorized > 0
    return num_factorized


def fit_lowers_loss(
    model, x, y, epochs=3, optimizer="adam", loss="mse", run_eagerly=False
):
    model.compile(optimizer=optimizer, loss=loss, run_eagerly=run_eagerly)
    history = model.fit(x, y, epochs=epochs, batch_size=len(y), verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    return losses


def random_like(output, seed=0):
    output = keras.ops.convert_to_numpy(output)
    return np.random.default_rng(seed).normal(size=output.shape).astype(
        "float32"
    )
