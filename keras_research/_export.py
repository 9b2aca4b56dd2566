"""The one decorator that registers our serializables with Keras."""

import keras

PACKAGE = "keras_research"


def register(obj):
    """Registers `obj` under `keras_research>Name` for `.keras` loading.

    Every public layer, optimizer, callback and activation of the package
    uses this, so that `keras.saving.load_model(path, safe_mode=True)`
    rebuilds it with no `custom_objects`.
    """
    return keras.saving.register_keras_serializable(package=PACKAGE)(obj)
