"""Keras resolves our activations by their registered string names."""

import json

import keras
import numpy as np
import pytest

import keras_research  # noqa: F401  (adds the names)
from keras_research import activations as A
from keras_research.activations import _activation_names

NAMES = {
    f"keras_research>{name}": getattr(A, name)
    for name in (
        "gelu_tanh",
        "mish",
        "silu",
        "silu_softplus_tanh_squared",
        "snake",
    )
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_keras_activations_get_finds_the_registered_name(name):
    assert keras.activations.get(name) is NAMES[name]
    assert keras.activations.deserialize(name) is NAMES[name]
    assert keras.layers.Activation(name).activation is NAMES[name]
    assert keras.layers.Dense(2, activation=name).activation is NAMES[name]


def test_keras_builtins_are_untouched():
    # Our `mish` and `silu` share their short names with Keras's own.
    assert keras.activations.get("mish") is keras.activations.mish
    assert keras.activations.get("silu") is keras.activations.silu
    assert keras.activations.get("gelu") is keras.activations.gelu
    with pytest.raises(ValueError, match="gelu_tanh"):
        keras.activations.get("gelu_tanh")
    with pytest.raises(ValueError, match="keras_research>no_such"):
        keras.activations.get("keras_research>no_such")


def test_names_are_added_once_and_never_replace_an_entry():
    from keras.src.activations import ALL_OBJECTS_DICT

    # Added at import (checked before calling `add_names`, which would add
    # them); a second call adds nothing.
    assert {n: ALL_OBJECTS_DICT.get(n) for n in NAMES} == NAMES
    assert _activation_names.add_names(NAMES.values()) == []


def test_keras_table_is_what_get_consults():
    # Pins the private hook: Keras's `get` reads `ALL_OBJECTS_DICT`.
    from keras.src.activations import ALL_OBJECTS_DICT

    def probe(x):
        return x

    ALL_OBJECTS_DICT["kr_probe>table"] = probe
    try:
        assert keras.activations.get("kr_probe>table") is probe
    finally:
        del ALL_OBJECTS_DICT["kr_probe>table"]


def test_keras_does_not_resolve_registered_names_by_itself():
    # When this fails, Keras resolves registered string names itself and
    # `keras_research/activations/_activation_names.py` can be removed.
    @keras.saving.register_keras_serializable(package="kr_probe")
    def unlisted(x):
        return x

    try:
        with pytest.raises(ValueError, match="kr_probe>unlisted"):
            keras.activations.get("kr_probe>unlisted")
    finally:
        keras.saving.get_custom_objects().pop("kr_probe>unlisted")


class ScaledDense(keras.layers.Layer):
    """A user's layer that keeps `activation` as the string it was given."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation_name = activation
        self.activation = keras.activations.get(activation)
        self.dense = keras.layers.Dense(units)

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x):
        return self.activation(2.0 * self.dense(x))

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "activation": self.activation_name,
        }


class SerializingDense(ScaledDense):
    """A user's layer that serializes `activation` as Keras's layers do."""

    def get_config(self):
        return {
            **super().get_config(),
            "activation": keras.activations.serialize(self.activation),
        }


@pytest.mark.parametrize("layer_cls", [ScaledDense, SerializingDense])
def test_custom_layer_round_trips_the_activation(layer_cls, tmp_path):
    name = "keras_research>gelu_tanh"
    layer = layer_cls(3, activation=name)
    config = json.loads(json.dumps(layer.get_config()))
    if layer_cls is ScaledDense:
        assert config["activation"] == name
    restored = layer_cls.from_config(config)
    assert restored.activation is A.gelu_tanh

    with keras.saving.custom_object_scope({layer_cls.__name__: layer_cls}):
        inputs = keras.Input((4,))
        model = keras.Model(inputs, layer_cls(3, activation=name)(inputs))
        x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
        path = str(tmp_path / "custom.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[-1].activation is A.gelu_tanh
    np.testing.assert_array_equal(loaded(x), model(x))


def test_activation_layer_by_name_saves_and_loads(tmp_path):
    inputs = keras.Input((4,))
    h = keras.layers.Dense(3, activation="keras_research>mish")(inputs)
    outputs = keras.layers.Activation("keras_research>snake")(h)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "named.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.layers[1].activation is A.mish
    assert loaded.layers[2].activation is A.snake
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    np.testing.assert_array_equal(loaded(x), model(x))
