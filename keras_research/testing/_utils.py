"""Helpers shared by the conformance checks (private)."""

import contextlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf


def to_numpy(x):
    """Converts a tensor, ragged tensor or structure of them to NumPy."""
    if isinstance(x, tf.RaggedTensor):
        return x.to_list()
    if isinstance(x, tf.SparseTensor):
        return tf.sparse.to_dense(x).numpy()
    if isinstance(x, (list, tuple)):
        return [to_numpy(v) for v in x]
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return keras.ops.convert_to_numpy(x)


def assert_same(actual, expected, *, atol, rtol, what):
    """Asserts (nested) outputs are equal (exactly when atol=rtol=0)."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{what}: keys differ"
        for k in expected:
            assert_same(actual[k], expected[k], atol=atol, rtol=rtol,
                        what=f"{what}[{k!r}]")
        return
    if isinstance(expected, list) and not isinstance(expected, np.ndarray):
        expected = np.asarray(expected, dtype=object) if _is_ragged_list(
            expected) else np.asarray(expected)
        actual = np.asarray(actual, dtype=expected.dtype)
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if expected.dtype == object:
        assert len(actual) == len(expected), f"{what}: lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(np.asarray(a), np.asarray(e), atol=atol, rtol=rtol,
                        what=f"{what}[{i}]")
        return
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != expected {expected.shape}"
    )
    if atol == 0 and rtol == 0:
        np.testing.assert_array_equal(actual, expected, err_msg=what)
    else:
        np.testing.assert_allclose(
            actual.astype(np.float64) if actual.dtype.kind == "f" else actual,
            expected.astype(np.float64)
            if expected.dtype.kind == "f" else expected,
            atol=atol, rtol=rtol, err_msg=what,
        )


def _is_ragged_list(value):
    if not isinstance(value, list) or not value:
        return False
    lengths = {len(v) if isinstance(v, list) else -1 for v in value}
    return len(lengths) > 1


def batch_size(x):
    """Returns the leading dimension of a batch (dense, ragged, sparse)."""
    if isinstance(x, dict):
        x = next(iter(x.values()))
    if isinstance(x, (list, tuple)):
        x = x[0]
    if isinstance(x, tf.RaggedTensor):
        return int(x.nrows())
    if isinstance(x, tf.SparseTensor):
        return int(x.dense_shape[0])
    return int(np.shape(x)[0])


def keras_input_like(x, name=None):
    """Builds a `keras.Input` matching one batch of data `x`."""
    if isinstance(x, tf.RaggedTensor):
        shape = tuple(x.shape[1:])
        return keras.Input(shape=shape, dtype=x.dtype.name, ragged=True,
                           name=name)
    if isinstance(x, tf.SparseTensor):
        shape = tuple(x.shape[1:])
        return keras.Input(shape=shape, dtype=x.dtype.name, sparse=True,
                           name=name)
    x = tf.convert_to_tensor(x)
    return keras.Input(shape=tuple(x.shape[1:]), dtype=x.dtype.name,
                       name=name)


def single_batch_dataset(x, y):
    """A dataset yielding the whole (x, y) as one batch, for any x type."""
    return tf.data.Dataset.from_tensors((x, y))


@contextlib.contextmanager
def dtype_policy(name):
    """Sets the global Keras dtype policy for the duration of a block."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


@contextlib.contextmanager
def temp_dir():
    with tempfile.TemporaryDirectory(prefix="keras_research_") as d:
        yield d


def temp_path(directory, name):
    return os.path.join(directory, name)


def save_and_reload(model, what):
    """Saves `model` as `.keras` and loads it with `safe_mode=True`.

    Raises `AssertionError` naming `what` when the file does not load with
    no `custom_objects` (typically: a class is not registered).
    """
    with temp_dir() as d:
        path = temp_path(d, "model.keras")
        model.save(path)
        try:
            return keras.saving.load_model(path, safe_mode=True)
        except (TypeError, ValueError) as e:
            raise AssertionError(
                f"{what}: .keras file does not load with safe_mode=True and "
                f"no custom_objects (is every class registered?): {e}"
            ) from e


_STRATEGY = []


def mirrored_strategy():
    """MirroredStrategy over 2 logical CPUs (or the devices there are).

    One strategy per process: TensorFlow's collective ops keep process-wide
    instance keys, and several MirroredStrategy objects over the same
    devices can hand two different all-reduces the same key.
    """
    if _STRATEGY:
        return _STRATEGY[0]
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    devices = [d.name for d in (gpus if len(gpus) >= 2 else cpus)][:2]
    _STRATEGY.append(tf.distribute.MirroredStrategy(devices))
    return _STRATEGY[0]


def float_outputs(outputs):
    """Flattens outputs and keeps floating ones."""
    flat = tf.nest.flatten(outputs, expand_composites=False)
    result = []
    for o in flat:
        dtype = keras.backend.standardize_dtype(o.dtype)
        if "float" in dtype:
            result.append(o)
    return result
