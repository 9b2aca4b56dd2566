"""Guard: keras_research runs only on Keras 3 with the TensorFlow backend.

This module must be imported before anything imports `keras`, so that a
wrong backend named in `KERAS_BACKEND` is reported by us, clearly, before
Keras tries (and fails) to import that backend.
"""

import os
import re

_FIX = (
    "keras_research needs Keras 3 with the TensorFlow backend. Set the "
    "environment variable KERAS_BACKEND=tensorflow before importing keras "
    "(for example `export KERAS_BACKEND=tensorflow`), or set "
    '"backend": "tensorflow" in ~/.keras/keras.json.'
)


def check_backend():
    """Raises `ImportError` unless Keras runs on the TensorFlow backend."""
    requested = os.environ.get("KERAS_BACKEND")
    if requested is not None and requested != "tensorflow":
        raise ImportError(
            f"{_FIX} Received: KERAS_BACKEND={requested!r}"
        )
    import keras

    if not keras.__version__.startswith("3."):
        raise ImportError(
            f"{_FIX} Received: keras version {keras.__version__}"
        )
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ImportError(f"{_FIX} Received: Keras backend {backend!r}")


def _release(version):
    """`"3.11.0rc1"` -> `(3, 11, 0)`: the leading numbers of a version."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    if match is None:
        raise ValueError(
            "`version` must start with MAJOR.MINOR. "
            f"Received: version={version!r}"
        )
    return tuple(int(part or 0) for part in match.groups())


def keras_version():
    """The installed Keras release as a tuple, e.g. `(3, 15, 1)`."""
    import keras

    return _release(keras.version())


def tf_version():
    """The installed TensorFlow release as a tuple, e.g. `(2, 21, 0)`."""
    import tensorflow as tf

    return _release(tf.__version__)


check_backend()
