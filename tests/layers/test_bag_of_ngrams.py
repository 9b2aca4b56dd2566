"""Tests for keras_research.layers.BagOfNgrams."""

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_research.layers import BagOfNgrams
from keras_research.testing import run_layer_test

REPO = Path(__file__).resolve().parents[2]
# Every character str.splitlines() splits on.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
TEXTS = [
    "a good film", "a bad film", "good good film a", "", "the end",
    "a good plot", "bad", "film film film",
]


def reference_tokens(text, ngrams):
    words = text.split(" ")
    words = [w for w in words if w]
    return [
        " ".join(words[i:i + n])
        for n in range(1, ngrams + 1)
        for i in range(len(words) - n + 1)
    ]


def reference_vocabulary(texts, ngrams, limit):
    """Counter reference: most frequent first, ties by first appearance."""
    counts, first = collections.Counter(), {}
    for text in texts:
        for token in reference_tokens(text, ngrams):
            counts[token] += 1
            first.setdefault(token, len(first))
    ranked = sorted(counts, key=lambda t: (-counts[t], first[t]))
    return ranked[:limit]


def reference_ids(texts, vocabulary, ngrams, distinct):
    index = {t: i + 1 for i, t in enumerate(vocabulary)}
    out = []
    for text in texts:
        ids = [index.get(t, 0) for t in reference_tokens(text, ngrams)]
        if distinct:
            ids = list(dict.fromkeys(ids))
        out.append(ids)
    return out


@pytest.mark.parametrize("ngrams", [1, 2, 3])
@pytest.mark.parametrize("max_tokens", [None, 6])
def test_adapt_matches_counter_reference(ngrams, max_tokens):
    layer = BagOfNgrams(max_tokens=max_tokens, ngrams=ngrams)
    layer.adapt(TEXTS, batch_size=3)  # counts merged across batches
    limit = None if max_tokens is None else max_tokens - 1
    expected = reference_vocabulary(TEXTS, ngrams, limit)
    assert layer.get_vocabulary() == ["[UNK]"] + expected
    assert layer.vocabulary_size() == len(expected) + 1


def test_adapt_counts_like_text_vectorization():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    texts = [" ".join(rng.choice(words, rng.integers(1, 30), p=None))
             for _ in range(300)]
    ours = BagOfNgrams(ngrams=2)
    ours.adapt(tf.data.Dataset.from_tensor_slices(texts))
    keras_layer = keras.layers.TextVectorization(
        standardize=None, ngrams=2, output_mode="int")
    keras_layer.adapt(texts)
    # Same set of tokens (both unlimited), each with the same count order.
    assert set(ours.get_vocabulary()[1:]) == set(
        keras_layer.get_vocabulary()[2:])


@pytest.mark.parametrize("distinct", [True, False])
@pytest.mark.parametrize("ngrams", [1, 2])
def test_ids_match_reference(distinct, ngrams):
    vocabulary = ["a", "film", "good", "a good", "bad"]
    layer = BagOfNgrams(ngrams=ngrams, distinct=distinct,
                        vocabulary=vocabulary)
    ids = layer(tf.constant(TEXTS))
    assert isinstance(ids, tf.RaggedTensor)
    assert ids.dtype == tf.int64
    assert ids.to_list() == reference_ids(TEXTS, vocabulary, ngrams,
                                          distinct)


def test_dataset_of_batches_and_steps():
    layer = BagOfNgrams(ngrams=1)
    data = tf.data.Dataset.from_tensor_slices(TEXTS).batch(2)
    layer.adapt(data, steps=1)  # only "a good film", "a bad film"
    assert layer.get_vocabulary() == ["[UNK]", "a", "film", "good", "bad"]


def test_conformance():
    run_layer_test(
        BagOfNgrams,
        {"ngrams": 2, "vocabulary": ["a", "film", "good", "a good"]},
        np.array(TEXTS, dtype=object),
        expected_output_dtype="int64",
        expected_num_trainable_weights=0,
        expected_output=reference_ids(
            TEXTS, ["a", "film", "good", "a good"], 2, True),
        run_distribution_check=False,
    )


def test_vocabulary_with_every_line_break_loads_in_a_fresh_process(
        tmp_path):
    """Keras's lookup layers read their vocabulary file back with
    `splitlines()`; these tokens then split into duplicates."""
    vocabulary = [f"w{i}{c}x" for i, c in enumerate(LINE_BREAKS)]
    vocabulary += ["the\x85", "a b"]
    # TensorFlow splits words on ASCII whitespace only: U+0085 stays.
    texts = ["the\x85 a b w7\x85x w8\u2028x", "nothing known"]
    inputs = keras.Input(shape=(), dtype="string")
    layer = BagOfNgrams(ngrams=2, name="bag")
    layer.set_vocabulary(vocabulary)
    model = keras.Model(inputs, layer(inputs))
    expected = model(tf.constant(texts)).to_list()
    index = {t: i + 1 for i, t in enumerate(vocabulary)}
    # "a" and "b" are unknown: one id 0 (distinct ids).
    assert expected[0][:4] == [
        index["the\x85"], 0, index["w7\x85x"], index["w8\u2028x"]]
    assert index["a b"] in expected[0] and expected[1] == [0]
    path = tmp_path / "bag.keras"
    model.save(path)
    script = textwrap.dedent(f"""
        import json, sys
        import keras
        import keras_research
        model = keras.saving.load_model({str(path)!r}, safe_mode=True)
        ids = model(keras.ops.convert_to_tensor({texts!r})).to_list()
        vocabulary = model.get_layer("bag").get_vocabulary()
        json.dump({{"ids": ids, "vocabulary": vocabulary}}, sys.stdout)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    assert loaded["vocabulary"] == ["[UNK]"] + vocabulary
    assert loaded["ids"] == expected


def test_call_without_vocabulary():
    with pytest.raises(ValueError, match="has no vocabulary yet"):
        BagOfNgrams()(tf.constant(["a"]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_tokens": 0}, "`max_tokens` must be a positive integer"),
        ({"max_tokens": 1}, "`max_tokens` must be >= 2"),
        ({"max_tokens": 2.5}, "`max_tokens` must be a positive integer"),
        ({"ngrams": 0}, "`ngrams` must be a positive integer"),
        ({"distinct": 1}, "`distinct` must be a bool"),
        ({"vocabulary": "abc"}, "`vocabulary` must be a list"),
        ({"vocabulary": ["a", ""]}, "`vocabulary` must be a list"),
        ({"vocabulary": ["a", "a"]}, "must hold distinct tokens"),
        ({"vocabulary": ["[UNK]"]}, "must hold distinct tokens"),
        ({"vocabulary": ["a", "b"], "max_tokens": 2}, "at most 1 fit"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BagOfNgrams(**kwargs)


def test_adapt_bad_arguments():
    with pytest.raises(ValueError, match="`batch_size` must be a positive"):
        BagOfNgrams().adapt(TEXTS, batch_size=-1)
    with pytest.raises(ValueError, match="must yield strings or 1-D"):
        BagOfNgrams().adapt(
            tf.data.Dataset.from_tensors(tf.constant([["a"]])))
