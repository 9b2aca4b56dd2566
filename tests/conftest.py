"""Shared test set-up: backend, logical CPU devices, seeds, markers."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Split the CPU into two logical devices before TensorFlow initializes, so
# that MirroredStrategy tests have two replicas on a CPU-only machine.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0],
        [tf.config.LogicalDeviceConfiguration()] * 2,
    )
except RuntimeError:  # pragma: no cover - already initialized elsewhere
    pass


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: long-running tests (deselect with -m 'not slow')"
    )


@pytest.fixture(autouse=True)
def _seed_and_policy():
    """Fixes seeds and restores the global dtype policy after each test."""
    # Every MirroredStrategy numbers its collective all-reduces from the same
    # base, and TensorFlow's collective executor remembers each key for the
    # life of the process: a second strategy in the same process can reuse a
    # key with other shapes ("Shape mismatch in the collective instance").
    # TensorFlow's own tests move the base for each strategy the same way
    # (tensorflow/python/distribute/strategy_combinations.py,
    # `_mirrored_strategy_with_collective_key_base`). There is no public
    # alternative that keeps the collective all-reduce users get by default:
    # `cross_device_ops=tf.distribute.ReductionToOneDevice()` would test
    # another code path, and resetting the eager context is private too. A
    # private class attribute (present in TF 2.16-2.21): if TensorFlow drops
    # it, this line fails every test loudly rather than letting keys clash.
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    keras.utils.set_random_seed(1234)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    # free_memory=False: a full gc.collect() per test cost ~1 s each.
    keras.backend.clear_session(free_memory=False)
