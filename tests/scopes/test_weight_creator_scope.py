"""Tests of keras_research.weight_creator_scope."""

import threading

import keras
import numpy as np
import pytest

import keras_research
from keras_research.scopes import _add_weight_hook

ORIGINAL_ADD_WEIGHT = keras.layers.Layer.add_weight


def _dense(units=3, input_dim=2, name=None):
    layer = keras.layers.Dense(units, name=name)
    layer.build((None, input_dim))
    return layer


def test_delegating_creator_sees_kwargs_and_layer():
    seen = []

    def creator(next_creator, **kwargs):
        seen.append(dict(kwargs))
        return next_creator(**kwargs)

    with keras_research.weight_creator_scope(creator):
        layer = _dense(name="logged")
    assert [(k["layer"], k["name"], tuple(k["shape"])) for k in seen] == [
        (layer, "kernel", (2, 3)),
        (layer, "bias", (3,)),
    ]
    assert "initializer" in seen[0] and "regularizer" in seen[0]
    assert [w.path for w in layer.weights] == [
        "logged/kernel",
        "logged/bias",
    ]


def test_creator_can_change_kwargs():
    def ones(next_creator, **kwargs):
        return next_creator(**dict(kwargs, initializer="ones"))

    with keras_research.weight_creator_scope(ones):
        layer = _dense()
    np.testing.assert_array_equal(layer.kernel, np.ones((2, 3)))
    np.testing.assert_array_equal(layer.bias, np.ones((3,)))


def test_creator_can_return_a_substitute():
    marker = object()

    class Custom(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(2, 2), name="w")

    def substitute(next_creator, **kwargs):
        return marker

    with keras_research.weight_creator_scope(substitute):
        layer = Custom()
        layer.build((None, 2))
    assert layer.w is marker
    assert layer.weights == []


def test_scopes_nest_innermost_first():
    order = []

    def make(tag):
        def creator(next_creator, **kwargs):
            order.append(tag)
            return next_creator(**kwargs)

        return creator

    with keras_research.weight_creator_scope(make("outer")):
        with keras_research.weight_creator_scope(make("inner")):
            keras.layers.Dense(1, use_bias=False).build((None, 1))
        keras.layers.Dense(1, use_bias=False).build((None, 1))
    assert order == ["inner", "outer", "outer"]


def test_nothing_changes_outside_a_scope():
    calls = []

    def creator(next_creator, **kwargs):
        calls.append(kwargs["name"])
        return next_creator(**kwargs)

    assert keras.layers.Layer.add_weight is ORIGINAL_ADD_WEIGHT
    with keras_research.weight_creator_scope(creator):
        assert _add_weight_hook.hook_installed()
    assert keras.layers.Layer.add_weight is ORIGINAL_ADD_WEIGHT
    _dense()
    assert calls == []


def test_original_restored_after_an_exception():
    def failing(next_creator, **kwargs):
        raise RuntimeError("creator failed")

    with pytest.raises(RuntimeError, match="creator failed"):
        with keras_research.weight_creator_scope(failing):
            _dense()
    assert keras.layers.Layer.add_weight is ORIGINAL_ADD_WEIGHT
    _dense()  # Works again.


def test_scopes_are_thread_local():
    """A scope in one thread does not touch layers built in another."""
    inside = threading.Event()
    built = threading.Event()
    calls = []
    other = {}

    def creator(next_creator, **kwargs):
        calls.append(kwargs["layer"].name)
        return next_creator(**kwargs)

    def scoped():
        with keras_research.weight_creator_scope(creator):
            inside.set()
            built.wait(timeout=30)
            _dense(name="in_scope_thread")

    def unscoped():
        inside.wait(timeout=30)
        other["layer"] = _dense(name="other_thread")
        built.set()

    threads = [
        threading.Thread(target=scoped),
        threading.Thread(target=unscoped),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(calls) == {"in_scope_thread"}
    assert len(other["layer"].weights) == 2
    assert keras.layers.Layer.add_weight is ORIGINAL_ADD_WEIGHT


def test_legacy_positional_add_weight_is_routed():
    seen = []

    class Legacy(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight((2, 3), "zeros", "float32", name="w")

    def creator(next_creator, **kwargs):
        seen.append((tuple(kwargs["shape"]), kwargs["initializer"]))
        return next_creator(**kwargs)

    with keras_research.weight_creator_scope(creator):
        layer = Legacy()
        layer.build(None)
    assert seen == [((2, 3), "zeros")]
    assert tuple(layer.w.shape) == (2, 3)


def test_creator_cannot_move_a_weight_to_another_layer():
    stranger = keras.layers.Dense(1)

    def creator(next_creator, **kwargs):
        return next_creator(**dict(kwargs, layer=stranger))

    with keras_research.weight_creator_scope(creator):
        with pytest.raises(ValueError, match="another layer"):
            _dense()


@pytest.mark.parametrize("creator", [None, 3, "creator"])
def test_creator_must_be_callable(creator):
    with pytest.raises(ValueError, match="creator"):
        keras_research.weight_creator_scope(creator)
