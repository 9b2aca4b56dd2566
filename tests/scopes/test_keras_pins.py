"""Pins every Keras/TF behaviour that keras_research.scopes relies on.

Each test fails loudly, naming the mechanism, if a Keras or TensorFlow
release changes what the scopes assume.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

import keras_research
from keras_research import _low_rank
from keras_research.scopes import _add_weight_hook, _factorized_layer
from keras_research.scopes._factorized_weight import FactorizedWeight

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(script):
    env = dict(
        os.environ,
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONPATH=str(REPO),
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_import_leaves_layer_add_weight_as_it_was():
    """`import keras_research` changes nothing in `keras.layers.Layer`."""
    result = _run(
        """
        import keras
        before = dict(vars(keras.layers.Layer))
        add_weight = keras.layers.Layer.add_weight
        import keras_research
        assert keras.layers.Layer.add_weight is add_weight
        assert dict(vars(keras.layers.Layer)) == before
        with keras_research.factorized_scope(rank=2, min_size=0):
            assert keras.layers.Layer.add_weight is not add_weight
            keras.layers.Dense(4).build((None, 8))
        assert keras.layers.Layer.add_weight is add_weight
        assert dict(vars(keras.layers.Layer)) == before
        print("UNCHANGED")
        """
    )
    assert "UNCHANGED" in result.stdout, result.stderr[-3000:]


def test_hook_wraps_another_librarys_add_weight():
    """The hook wraps whatever `add_weight` is current when a scope opens."""
    keras_add_weight = keras.layers.Layer.add_weight
    calls = []

    def library_add_weight(self, *args, **kwargs):
        calls.append(kwargs.get("name"))
        return keras_add_weight(self, *args, **kwargs)

    keras.layers.Layer.add_weight = library_add_weight
    try:
        with keras_research.factorized_scope(rank=2, min_size=0):
            layer = keras.layers.Dense(8)
            layer.build((None, 8))
        # The scope's factors went through the library's wrapper, which is
        # back in place afterwards.
        assert calls == ["kernel_left", "kernel_right", "bias"]
        assert keras.layers.Layer.add_weight is library_add_weight
        assert isinstance(layer.kernel, FactorizedWeight)
    finally:
        keras.layers.Layer.add_weight = keras_add_weight


def test_a_wrapper_installed_inside_a_scope_stays():
    keras_add_weight = keras.layers.Layer.add_weight
    try:
        with keras_research.weight_creator_scope(
            lambda next_creator, **kw: next_creator(**kw)
        ):
            hooked = keras.layers.Layer.add_weight

            def late_wrapper(self, *args, **kwargs):
                return hooked(self, *args, **kwargs)

            keras.layers.Layer.add_weight = late_wrapper
        # Not ours to remove; the stale hook inside it passes through.
        assert keras.layers.Layer.add_weight is late_wrapper
        layer = keras.layers.Dense(3)
        layer.build((None, 2))
        assert len(layer.weights) == 2
    finally:
        keras.layers.Layer.add_weight = keras_add_weight


def test_keras_variable_frame_is_found_well_within_the_walk():
    """`in_keras_variable_init` walks caller frames for a keras.Variable.

    Measures the depth at which the frame is found from inside a TF
    variable creator; if Keras or TF adds frames, this fails before the
    scope starts factorizing Keras's own inner variables.
    """
    depths = []

    def creator(next_creator, **kwargs):
        depths.append(
            next(
                (
                    depth
                    for depth in range(1, 13)
                    if _add_weight_hook.in_keras_variable_init(depth)
                ),
                None,
            )
        )
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        keras.Variable(np.ones((4, 4), "float32"))
        tf.Variable(np.ones((4, 4), "float32"))
    keras_depth, raw_depth = depths
    assert keras_depth is not None and keras_depth <= 8, (
        "The keras.Variable frame moved beyond depth 8 of the walk in "
        f"in_keras_variable_init (found at {keras_depth}); raise its "
        "max_depth or find another signal."
    )
    assert raw_depth is None


def test_name_scope_stack_lists_the_layers_being_built():
    chains = []

    def creator(next_creator, **kwargs):
        chains.append(
            [x.name for x in _add_weight_hook.building_layers()]
        )
        return next_creator(**kwargs)

    inner = keras.layers.Dense(2, name="inner_dense")
    outer = keras.Sequential([inner], name="outer_seq")
    with keras_research.weight_creator_scope(creator):
        outer.build((None, 3))
    assert chains and chains[0][-1] == "inner_dense", chains


def test_auto_names_are_recognized():
    assert _add_weight_hook.has_auto_name(keras.layers.Dense(1))
    assert _add_weight_hook.has_auto_name(keras.layers.GRU(1).cell)
    assert not _add_weight_hook.has_auto_name(
        keras.layers.Dense(1, name="head")
    )
    mha = keras.layers.MultiHeadAttention(2, 4)
    mha.build((None, 3, 8), (None, 3, 8))
    assert not _add_weight_hook.has_auto_name(mha._query_dense)


def test_class_swap_serializes_as_the_loader():
    """A live layer's class is swapped to serialize as FactorizedLayer."""
    with keras_research.factorized_scope(rank=2, min_size=0):
        layer = keras.layers.Dense(8, name="swapped")
        layer.build((None, 8))
    assert isinstance(layer, keras.layers.Dense)
    assert type(layer).__name__ == "Dense"
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "keras_research>FactorizedLayer"
    assert config["config"]["layer"]["class_name"] == "Dense"
    rebuilt = keras.saving.deserialize_keras_object(config)
    assert type(rebuilt) is type(layer)


def test_registry_entry_is_never_overwritten():
    loader = "keras_research>FactorizedLayer"

    class NewLayer(keras.layers.Dense):
        pass

    cls = _factorized_layer.factorized_class(NewLayer)
    assert keras.saving.get_registered_name(cls) == loader
    assert (
        keras.saving.get_registered_object(loader)
        is _factorized_layer.FactorizedLayer
    )


def test_public_properties_return_the_factorized_weight():
    """The fast paths read `Dense.kernel` and `Embedding.embeddings`."""
    with keras_research.factorized_scope(rank=2, min_size=0):
        dense = keras.layers.Dense(8)
        dense.build((None, 8))
        embedding = keras.layers.Embedding(20, 8)
        embedding.build((None,))
    assert isinstance(dense.kernel, FactorizedWeight)
    assert isinstance(embedding.embeddings, FactorizedWeight)


def test_dense_paths_share_one_implementation(monkeypatch):
    """FactorizedDense and the scope's Dense run `low_rank_dense`."""
    calls = []
    original = _low_rank.low_rank_dense

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_low_rank, "low_rank_dense", counting)
    x = np.ones((2, 8), "float32")
    keras_research.layers.FactorizedDense(8, rank=2)(x)
    assert len(calls) == 1
    with keras_research.factorized_scope(rank=2, min_size=0):
        dense = keras.layers.Dense(8)
        dense.build((None, 8))
    dense(x)
    assert len(calls) == 2
