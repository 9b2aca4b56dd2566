"""Lets Keras find our activations by their registered string names.

`keras.activations.get("keras_research>gelu_tanh")` (and so
`keras.layers.Activation("keras_research>gelu_tanh")` and any layer's
`activation="keras_research>gelu_tanh"`) looks a string up only in Keras's
private table of its built-in activations,
`keras.src.activations.ALL_OBJECTS_DICT`, not in the registry that
`keras.saving.register_keras_serializable` fills. Keras 3 (3.10 to 3.15
checked) has no public hook for this, so this isolated module adds the
registered name of each of our activations to that table.

It only adds keys: every name holds `>`, which no Keras built-in has, so no
Keras entry is replaced, and a name Keras already resolves is left alone.
If a future Keras drops the table, nothing is added and the string names
stop resolving: `tests/activations/test_activation_names.py` pins the
table and fails then, and also fails on the day Keras resolves registered
names itself (this module can then go).
"""

import keras

try:  # Keras's one table of activation names (Keras 3.0 to 3.15 at least).
    from keras.src.activations import ALL_OBJECTS_DICT as _KERAS_NAMES
except ImportError:  # pragma: no cover - a Keras without the table
    _KERAS_NAMES = None


def keras_resolves(name):
    """Whether `keras.activations.get(name)` finds `name` without us."""
    if _KERAS_NAMES is not None and name in _KERAS_NAMES:
        return True
    try:
        keras.activations.get(name)
    except ValueError:
        return False
    return True


def add_names(activations):
    """Makes each activation resolvable by its registered name.

    Args:
        activations: iterable of registered activations (e.g. the
            `FusedActivation`s registered under `keras_research>name`).

    Returns:
        The list of names added to Keras's table.
    """
    added = []
    if not isinstance(_KERAS_NAMES, dict):
        return added
    for activation in activations:
        name = keras.saving.get_registered_name(activation)
        if ">" not in name or keras_resolves(name):
            continue
        _KERAS_NAMES[name] = activation
        added.append(name)
    return added
