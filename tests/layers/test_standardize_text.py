"""Tests for keras_research.layers.StandardizeText."""

import re
import string

import numpy as np
import pytest
import tensorflow as tf

from keras_research.layers import StandardizeText
from keras_research.testing import run_layer_test

# Every character str.splitlines() splits on.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def reference(text, keep="!?"):
    """Plain-Python reference of the default standardization."""
    text = text.lower()
    text = re.sub(r"<[^>]*>", " ", text)
    for c in keep:
        text = text.replace(c, f" {c} ")
    text = "".join(
        c for c in text if c not in string.punctuation or c in keep
    )
    return " ".join(text.split())  # str.split: all Unicode whitespace


TEXTS = [
    "Don't miss it!<br /><br />A GREAT film?",
    "the\x85end" + "".join(f"w{i}{c}" for i, c in enumerate(LINE_BREAKS)),
    "  tabs\tand\xa0non-breaking\u2003spaces  ",
    "Ünïcode ÉLAN, naïve café",
    "",
    "<i>only a tag</i>",
]


def standardize(texts, **kwargs):
    """The layer's output, with its words joined by single spaces."""
    out = StandardizeText(**kwargs)(tf.constant(texts))
    return [" ".join(t.decode("utf-8").split()) for t in out.numpy()]


def test_matches_the_python_reference():
    assert standardize(TEXTS) == [reference(t) for t in TEXTS]


def test_tensorflow_and_python_split_the_output_alike():
    out = StandardizeText()(tf.constant(TEXTS))
    words = tf.strings.split(out).to_list()
    assert [[w.decode("utf-8") for w in row] for row in words] == [
        t.decode("utf-8").split() for t in out.numpy()]
    flat = [w.decode("utf-8") for row in words for w in row]
    assert all(w.splitlines() == [w] for w in flat)
    assert not set(LINE_BREAKS) & set("".join(flat))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"lowercase": False}, "Dont miss it ! A GREAT film ?"),
        ({"strip_html": False}, "dont miss it ! br br a great film ?"),
        ({"keep_punctuation": ""}, "dont miss it a great film"),
        ({"keep_punctuation": "'"}, "don ' t miss it a great film"),
    ],
)
def test_options(kwargs, expected):
    assert standardize([TEXTS[0]], **kwargs) == [expected]


def test_keeps_the_input_shape():
    out = StandardizeText()(tf.constant([["A b"], ["C, d\x85"]]))
    assert out.shape == (2, 1)
    assert out.numpy().tolist() == [[b"a b"], [b"c d "]]


def test_conformance():
    run_layer_test(
        StandardizeText,
        {"keep_punctuation": "!"},
        np.array(TEXTS, dtype=object),
        expected_output_shape=(len(TEXTS),),
        expected_output_dtype="string",
        expected_num_trainable_weights=0,
        atol=0,  # exact comparisons (strings)
        rtol=0,
        run_distribution_check=False,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lowercase": 1}, "`lowercase` must be a bool"),
        ({"strip_html": "yes"}, "`strip_html` must be a bool"),
        ({"keep_punctuation": "a"}, "`keep_punctuation` must be a string"),
        ({"keep_punctuation": ["!"]}, "`keep_punctuation` must be a string"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StandardizeText(**kwargs)
