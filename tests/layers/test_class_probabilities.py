"""Tests for keras_research.layers.ClassProbabilities."""

import keras
import numpy as np
import pytest

from keras_research.layers import ClassProbabilities
from keras_research.testing import run_layer_test


def test_softmax_values_and_decode():
    logits = np.array([[0.0, 2.0, -1.0], [3.0, 0.0, 0.0]], "float32")
    layer = ClassProbabilities(["a", "b", "c"])
    got = keras.ops.convert_to_numpy(layer(logits))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert layer.decode(got) == ["b", "a"]
    assert layer.class_names == ("a", "b", "c")


def test_conformance():
    run_layer_test(
        ClassProbabilities,
        {"class_names": ["neg", "pos"]},
        np.random.default_rng(0).normal(size=(4, 2)).astype("float32"),
        expected_output_shape=(4, 2),
        expected_num_trainable_weights=0,
    )


def test_class_names_survive_saving(tmp_path):
    inputs = keras.Input((3,))
    outputs = ClassProbabilities(["x", "y", "z"], name="probabilities")(
        keras.layers.Dense(3)(inputs)
    )
    path = tmp_path / "m.keras"
    keras.Model(inputs, outputs).save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.get_layer("probabilities").class_names == ("x", "y", "z")


@pytest.mark.parametrize(
    "class_names", [[], "ab", ["a", "a"], ["a", 1], None]
)
def test_bad_class_names(class_names):
    with pytest.raises(ValueError, match="`class_names` must be a non-empty"):
        ClassProbabilities(class_names)


def test_logits_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"len\(class_names\)=3"):
        ClassProbabilities(["a", "b", "c"])(np.zeros((2, 2), "float32"))
