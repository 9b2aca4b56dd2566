"""BagOfNgrams: strings to ragged bags of word and n-gram ids."""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from keras_research._checks import check_bool, check_positive_int
from keras_research._export import register

OOV_TOKEN = "[UNK]"
_VOCABULARY_FILE = "vocabulary.json"
_ADAPT_BATCH_SIZE = 2048


def _tokens(texts, ngrams):
    """Whitespace tokens and their n-grams, as a ragged string tensor."""
    tokens = tf.strings.split(texts)
    if ngrams > 1:
        tokens = tf.strings.ngrams(
            tokens, ngram_width=tuple(range(1, ngrams + 1)), separator=" "
        )
    return tokens


def _first_occurrences(index, num_unique):
    """Position of the first element of each group found by `tf.unique`."""
    return tf.math.unsorted_segment_min(
        tf.range(tf.size(index)), index, num_unique
    )


def _count_batch(texts, ngrams):
    """Distinct tokens of a batch (as fingerprints), counts and spellings."""
    tokens = _tokens(texts, ngrams).flat_values
    unique, index, counts = tf.unique_with_counts(
        tf.strings.to_hash_bucket_fast(tokens, 2**62)
    )
    first = _first_occurrences(index, tf.size(unique))
    return unique, tf.cast(counts, tf.int64), tf.gather(tokens, first)


def count_tokens(dataset, ngrams, limit):
    """The `limit` most frequent tokens of a dataset of string batches.

    Each batch is counted in a parallel `tf.data` map
    (`tf.unique_with_counts` over 64-bit fingerprints of the tokens), then
    the per-batch counts are merged. Most frequent first; ties in order of
    first appearance.
    """
    parts = list(
        dataset.map(
            lambda texts: _count_batch(texts, ngrams),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        ).prefetch(tf.data.AUTOTUNE)
    )
    if not parts:
        return []
    fingerprints, counts, tokens = (
        tf.concat([part[i] for part in parts], axis=0) for i in range(3)
    )
    unique, index = tf.unique(fingerprints)
    num_unique = tf.size(unique)
    counts = tf.math.unsorted_segment_sum(counts, index, num_unique)
    first = _first_occurrences(index, num_unique)
    k = min(limit, int(num_unique)) if limit is not None else int(num_unique)
    # `top_k` puts the lower index first among equal counts: ties stay in
    # order of first appearance.
    top = tf.math.top_k(counts, k=k, sorted=True).indices
    return [
        t.decode("utf-8")
        for t in tf.gather(tokens, tf.gather(first, top)).numpy()
    ]


def _as_batches(data, batch_size):
    """A dataset of 1-D string batches from `data`."""
    if isinstance(data, tf.data.Dataset):
        rank = data.element_spec.shape.rank
        if rank == 0:
            return data.batch(batch_size)
        if rank == 1:
            return data
        raise ValueError(
            "`data` must yield strings or 1-D batches of strings. Received "
            f"a dataset with element_spec={data.element_spec}"
        )
    texts = tf.reshape(tf.convert_to_tensor(data, dtype=tf.string), [-1])
    return tf.data.Dataset.from_tensor_slices(texts).batch(batch_size)


@register
class BagOfNgrams(keras.layers.Layer):
    """Maps strings to ragged bags of word and n-gram ids.

    Splits each string on whitespace, forms the word n-grams of widths
    1 to `ngrams` (joined by a space, as `keras.layers.TextVectorization`
    does) and maps each token to its id in the vocabulary; tokens outside
    it get id 0 (`"[UNK]"`). With `distinct=True` (the default) each id is
    kept once per string, in order of first appearance: the binary bag of
    words of classical text classifiers, which makes a mean over the bag
    weight every distinct word or n-gram equally. The output is a
    `tf.RaggedTensor` (no padding), ready for
    `keras_research.layers.RaggedEmbeddingBag`.

    The vocabulary is learned with `adapt` (counted in one parallel pass
    of `tf.strings` ops, several times faster than
    `TextVectorization.adapt`), or given with `vocabulary` or
    `set_vocabulary`. It is saved with the model as a JSON asset, so that
    every token, whatever characters it holds, loads back unchanged (Keras's
    own lookup layers write one token per line and read it back with
    `str.splitlines()`, which breaks tokens holding U+0085, U+2028 and
    the like). Pair the layer with `keras_research.layers.StandardizeText`
    for raw text.

    Args:
        max_tokens: int or `None`. Largest vocabulary size, counting the
            out-of-vocabulary id 0: `adapt` keeps the `max_tokens - 1` most
            frequent tokens. `None`: no limit. Defaults to `None`.
        ngrams: int. Largest n-gram width; 1 gives words only. Defaults to
            `2`.
        distinct: bool. Whether to keep each id once per string. Defaults to
            `True`.
        vocabulary: list of str or `None`. The tokens with ids 1, 2, ...,
            distinct and without `"[UNK]"`. Defaults to `None` (call `adapt`
            or `set_vocabulary` before use).
        **kwargs: Base layer keyword arguments, such as `name`.

    Call arguments:
        inputs: 1-D string tensor (a batch of texts).

    Input shape:
        `(batch_size,)`, dtype `string`.

    Output shape:
        `(batch_size, None)`, ragged, dtype `int64`.

    Returns:
        A `tf.RaggedTensor` of ids in `[0, vocabulary_size())`. A string
        without tokens gives an empty row.

    Raises:
        ValueError: if an argument or the vocabulary is invalid, or if the
            layer is called before it has a vocabulary.

    Example:

    >>> import keras_research
    >>> layer = keras_research.layers.BagOfNgrams(ngrams=2)
    >>> layer.adapt(["a good film", "a bad film"])
    >>> layer.get_vocabulary()[:4]
    ['[UNK]', 'a', 'film', 'good']
    >>> import tensorflow as tf
    >>> layer(tf.constant(["a good a good plot"])).to_list()
    [[1, 3, 0, 4]]
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        ngrams: int = 2,
        distinct: bool = True,
        vocabulary: list | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if max_tokens is not None:
            max_tokens = check_positive_int("max_tokens", max_tokens)
            if max_tokens < 2:
                raise ValueError(
                    "`max_tokens` must be >= 2 (id 0 is the out-of-vocabulary "
                    f"id) or None. Received: max_tokens={max_tokens!r}"
                )
        self.max_tokens = max_tokens
        self.ngrams = check_positive_int("ngrams", ngrams)
        check_bool("distinct", distinct)
        self.distinct = distinct
        self.vocabulary = vocabulary
        self._vocabulary = None
        self._table = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary):
        """Sets the tokens of ids 1, 2, ... (a list of distinct strings)."""
        if isinstance(vocabulary, (np.ndarray, tuple)):
            vocabulary = list(vocabulary)
        if not isinstance(vocabulary, list) or not all(
            isinstance(t, str) and t for t in vocabulary
        ):
            raise ValueError(
                "`vocabulary` must be a list of non-empty strings. Received: "
                f"vocabulary={str(vocabulary)[:200]}"
            )
        if len(set(vocabulary)) != len(vocabulary) or OOV_TOKEN in vocabulary:
            repeated = sorted(
                {t for t in vocabulary if vocabulary.count(t) > 1}
            )[:5] if len(vocabulary) < 10_000 else "..."
            raise ValueError(
                "`vocabulary` must hold distinct tokens and not the "
                f"out-of-vocabulary token {OOV_TOKEN!r}. Repeated: {repeated}"
            )
        if self.max_tokens is not None and len(vocabulary) >= self.max_tokens:
            raise ValueError(
                f"`vocabulary` has {len(vocabulary)} tokens; with "
                f"max_tokens={self.max_tokens} at most {self.max_tokens - 1} "
                "fit (id 0 is the out-of-vocabulary id)."
            )
        # A NumPy array: Keras would wrap a list, element by element.
        self._vocabulary = np.asarray(vocabulary, dtype=object)
        keys = tf.constant(vocabulary or [""], dtype=tf.string)
        values = tf.range(1, tf.size(keys) + 1, dtype=tf.int64)
        if not vocabulary:
            values = tf.zeros([1], tf.int64)
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, values),
            default_value=tf.constant(0, tf.int64),
        )

    def get_vocabulary(self):
        """The tokens by id: `"[UNK]"` first (id 0), then the vocabulary."""
        self._check_vocabulary()
        return [OOV_TOKEN] + self._vocabulary.tolist()

    def vocabulary_size(self):
        """Number of ids, counting the out-of-vocabulary id 0."""
        self._check_vocabulary()
        return len(self._vocabulary) + 1

    def adapt(self, data, batch_size=None, steps=None):
        """Learns the vocabulary: the most frequent tokens of `data`.

        Args:
            data: a `tf.data.Dataset` of strings or of 1-D string batches,
                or an array-like of strings.
            batch_size: int. Texts per counting batch when `data` is not
                batched. Defaults to 2048.
            steps: int or `None`. Number of batches of `data` to read.
                Defaults to all.
        """
        batch_size = check_positive_int(
            "batch_size", batch_size or _ADAPT_BATCH_SIZE
        )
        batches = _as_batches(data, batch_size)
        if steps is not None:
            batches = batches.take(check_positive_int("steps", steps))
        limit = None if self.max_tokens is None else self.max_tokens - 1
        self.set_vocabulary(count_tokens(batches, self.ngrams, limit))

    def _check_vocabulary(self):
        if self._vocabulary is None:
            raise ValueError(
                f"BagOfNgrams layer {self.name!r} has no vocabulary yet: call "
                "`adapt(texts)` or `set_vocabulary(tokens)` first, or pass "
                "`vocabulary=`."
            )

    def call(self, inputs):
        self._check_vocabulary()
        texts = tf.convert_to_tensor(inputs, dtype=tf.string)
        tokens = _tokens(texts, self.ngrams)
        ids = tokens.with_flat_values(self._table.lookup(tokens.flat_values))
        if self.distinct:
            ids = _distinct_per_row(ids)
        return ids

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(
            (inputs.shape[0], None), dtype="int64", ragged=True
        )

    def save_assets(self, dir_path):
        if self._vocabulary is not None:
            path = os.path.join(dir_path, _VOCABULARY_FILE)
            # ensure_ascii: the file holds no line break but the JSON's own.
            with open(path, "w", encoding="ascii") as f:
                json.dump(self._vocabulary.tolist(), f, ensure_ascii=True)

    def load_assets(self, dir_path):
        path = os.path.join(dir_path, _VOCABULARY_FILE)
        if os.path.exists(path):
            with open(path, encoding="ascii") as f:
                self.set_vocabulary(json.load(f))

    def get_config(self):
        return {
            **super().get_config(),
            "max_tokens": self.max_tokens,
            "ngrams": self.ngrams,
            "distinct": self.distinct,
            "vocabulary": self.vocabulary,
        }


def _distinct_per_row(ids):
    """Keeps the first occurrence of each id in every row."""
    values = ids.flat_values
    rows = ids.value_rowids()
    width = tf.maximum(tf.reduce_max(values), 0) + 1
    # One key per (row, id); `tf.unique` keeps first occurrences in order,
    # so the rows of the unique keys stay sorted.
    keys, _ = tf.unique(rows * width + values)
    return tf.RaggedTensor.from_value_rowids(
        keys % width, keys // width, nrows=ids.nrows(out_type=tf.int64)
    )
