"""StandardizeText: lowercasing and punctuation stripping for raw text."""

import string

import keras
import tensorflow as tf

from keras_research._checks import check_bool
from keras_research._export import register

# The whitespace that `tf.strings.split` keeps inside words: every character
# `str.splitlines()` splits on but \n and \r (\x0b, \x0c, \x1c-\x1e, U+0085,
# U+2028, U+2029), \x1f and the Unicode space separators (`\p{Zs}` without
# the ASCII space), in RE2 syntax. Frequent characters (space, \t, \n) are
# left out of the pattern on purpose: replacing them would double the cost.
_WHITESPACE = (
    r"[\x0b\x0c\x1c-\x1f\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}"
    r"\x{2029}\x{202f}\x{205f}\x{3000}]"
)
_HTML_TAG = r"<[^>]*>"


def _character_class(characters):
    return "[" + "".join("\\" + c for c in characters) + "]"


@register
class StandardizeText(keras.layers.Layer):
    """Lowercases text, turns HTML tags into spaces and strips punctuation.

    Like `keras.layers.TextVectorization`'s
    `"lower_and_strip_punctuation"`, with three differences that suit
    bag-of-words classifiers of web text such as IMDB reviews:

    - every kind of whitespace and line break becomes ASCII whitespace,
      including all characters that `str.splitlines()` splits on
      (`\\x0b`, `\\x0c`, `\\x1c`-`\\x1e`, U+0085, U+2028, U+2029) and the
      Unicode space separators (U+00A0, ...). No word split from the output
      holds a line break, so a vocabulary built from it can be written one
      token per line (Keras reads such files back with `splitlines()`);
    - HTML tags (`<br />`) become spaces (`strip_html=True`);
    - the characters of `keep_punctuation` (by default `!` and `?`, which
      carry sentiment) become words of their own; the other ASCII
      punctuation characters are removed, so `"don't"` becomes `"dont"`.

    The layer has no weights and runs on any string tensor, inside a model
    (raw strings in) or in a `tf.data` pipeline.

    Args:
        lowercase: bool. Whether to lowercase (UTF-8 aware). Defaults to
            `True`.
        strip_html: bool. Whether to replace `<...>` tags with a space.
            Defaults to `True`.
        keep_punctuation: str. ASCII punctuation characters kept as
            separate words. Defaults to `"!?"`.
        **kwargs: Base layer keyword arguments, such as `name`.

    Call arguments:
        inputs: string tensor of any shape.

    Input shape:
        Any shape, dtype `string`.

    Output shape:
        The input shape, dtype `string`.

    Returns:
        The standardized strings: words separated by ASCII whitespace (space,
        `\t`, `\n`, `\r`; possibly several), as `tf.strings.split` and
        `str.split()` split them alike.

    Raises:
        ValueError: if an argument is invalid.

    Example:

    >>> import tensorflow as tf
    >>> import keras_research
    >>> layer = keras_research.layers.StandardizeText()
    >>> texts = tf.constant(["Don't miss it!<br />Great\\u2028film\\x85"])
    >>> tf.strings.split(layer(texts)).to_list()
    [[b'dont', b'miss', b'it', b'!', b'great', b'film']]
    """  # noqa: E501

    def __init__(
        self,
        lowercase: bool = True,
        strip_html: bool = True,
        keep_punctuation: str = "!?",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_bool("lowercase", lowercase)
        check_bool("strip_html", strip_html)
        if not isinstance(keep_punctuation, str) or not set(
            keep_punctuation
        ) <= set(string.punctuation):
            raise ValueError(
                "`keep_punctuation` must be a string of ASCII punctuation "
                f"characters (from {string.punctuation!r}). Received: "
                f"keep_punctuation={keep_punctuation!r}"
            )
        self.lowercase = lowercase
        self.strip_html = strip_html
        self.keep_punctuation = keep_punctuation
        removed = "".join(
            c for c in string.punctuation if c not in keep_punctuation
        )
        self._removed = _character_class(removed) if removed else None
        self._kept = (
            "(" + _character_class(keep_punctuation) + ")"
            if keep_punctuation
            else None
        )
        # One pass for the tags and the rare whitespace: same cost as one.
        self._spaces = (
            f"{_HTML_TAG}|{_WHITESPACE}" if strip_html else _WHITESPACE
        )

    def call(self, inputs):
        x = tf.convert_to_tensor(inputs, dtype=tf.string)
        if self.lowercase:
            x = tf.strings.lower(x, encoding="utf-8")
        x = tf.strings.regex_replace(x, self._spaces, " ")
        if self._kept:
            x = tf.strings.regex_replace(x, self._kept, r" \1 ")
        if self._removed:
            x = tf.strings.regex_replace(x, self._removed, "")
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs):
        return keras.KerasTensor(inputs.shape, "string")

    def get_config(self):
        return {
            **super().get_config(),
            "lowercase": self.lowercase,
            "strip_html": self.strip_html,
            "keep_punctuation": self.keep_punctuation,
        }
