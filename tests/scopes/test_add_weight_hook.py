"""Pins the Keras internals that scopes/_add_weight_hook.py relies on."""

import keras

import keras_research
from keras_research.scopes import _add_weight_hook


def test_hook_is_reference_counted():
    def noop(next_creator, **kwargs):
        return next_creator(**kwargs)

    original = keras.layers.Layer.add_weight
    outer = keras_research.weight_creator_scope(noop)
    inner = keras_research.weight_creator_scope(noop)
    with outer:
        with inner:
            assert _add_weight_hook.hook_installed()
        assert _add_weight_hook.hook_installed()
    assert keras.layers.Layer.add_weight is original


def test_building_layers_lists_the_build_chain():
    chains = []

    def creator(next_creator, **kwargs):
        chains.append(
            (
                kwargs["name"],
                [layer.name for layer in _add_weight_hook.building_layers()],
            )
        )
        return next_creator(**kwargs)

    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    x = keras.ops.ones((1, 3, 8))
    with keras_research.weight_creator_scope(creator):
        mha(x, x)
    assert chains[0] == ("kernel", ["mha", "query"])


def test_variable_path_predicts_keras_paths():
    predicted = []

    def creator(next_creator, **kwargs):
        layer = kwargs["layer"]
        predicted.append(
            _add_weight_hook.variable_path(layer, kwargs["name"])
        )
        return next_creator(**kwargs)

    with keras_research.weight_creator_scope(creator):
        model = keras.Sequential(
            [keras.Input((4,)), keras.layers.Dense(2, name="d")]
        )
        mha = keras.layers.MultiHeadAttention(1, 2, name="attn")
        x = keras.ops.ones((1, 2, 4))
        mha(x, x)
    actual = [w.path for w in model.weights] + [w.path for w in mha.weights]
    assert predicted == actual


def test_class_header_matches_keras_serialization():
    layer = keras.layers.Dense(2)
    config = keras.saving.serialize_keras_object(layer)
    header = _add_weight_hook.class_header(keras.layers.Dense)
    assert header == {
        key: config[key] for key in ("module", "class_name", "registered_name")
    }


def test_layer_containers():
    inputs = keras.Input((2,))
    functional = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    assert _add_weight_hook.is_layer_container(functional)
    assert _add_weight_hook.is_layer_container(keras.Sequential())
    assert not _add_weight_hook.is_layer_container(keras.layers.Dense(1))


def test_default_get_config_detection():
    class Auto(keras.layers.Layer):
        pass

    assert _add_weight_hook.is_default_get_config(Auto)
    assert not _add_weight_hook.is_default_get_config(keras.layers.Dense)
