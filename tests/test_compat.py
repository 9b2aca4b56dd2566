"""keras_research._compat: each Keras work-around, its gate and its reach.

For each fix: the installed Keras has the bug exactly when the fix's gate
says so (these tests fail on the day a Keras release fixes a bug, so that
its range can be closed), the fix works, and every other case still runs
Keras's own code. A subprocess imports keras_research with the gates
pointing away from the installed Keras and finds Keras's trainer untouched.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

import keras_research
from keras_research import _compat
from keras_research._backend import keras_version
from keras_research.testing import _utils

RAGGED_BUG = _compat.has_bug(_compat.RAGGED_SYMBOLIC_BUILD_BUG)
SCALAR_BUG = _compat.has_bug(_compat.MULTI_WORKER_SCALAR_LOGS_BUG)


def _keras_own(fn):
    """Keras's function behind our wrapper (or `fn` when not wrapped)."""
    if getattr(fn, _compat._MARK, False):
        return fn.__wrapped__
    return fn


def _ragged_sum_model():
    inputs = keras.Input((None,), dtype="int64", ragged=True)
    outputs = keras.layers.Dense(1, kernel_initializer="ones")(
        keras.layers.Lambda(
            lambda r: tf.reduce_sum(tf.cast(r, "float32"), axis=1,
                                    keepdims=True),
            output_shape=(1,))(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _distributed_batch(strategy, dataset):
    """The first batch of `dataset` as Keras's TF epoch iterator reads it."""
    return next(iter(strategy.experimental_distribute_dataset(dataset)))


def _head():
    """What the epoch iterator yields before the data iterator."""
    return (0,) if keras_version() < (3, 11) else (0, 0)


class _Recorder:
    """Stands in for `Trainer._symbolic_build`; records its `data_batch`."""

    def __init__(self):
        self.batches = []

    def __call__(self, iterator=None, data_batch=None):
        self.batches.append(data_batch)


# --- Gates -----------------------------------------------------------------


@pytest.mark.parametrize(
    "bug, version, expected",
    [
        (((3, 0), None), (3, 10, 0), True),
        (((3, 0), None), (2, 15, 0), False),
        (((3, 0), (3, 16)), (3, 15, 1), True),
        (((3, 0), (3, 16)), (3, 16, 0), False),
        (((3, 11), None), (3, 10, 0), False),
    ],
)
def test_has_bug_is_a_half_open_range(bug, version, expected):
    assert _compat.has_bug(bug, version) is expected


def test_fixes_are_installed_exactly_where_gated():
    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce = tf_trainer.reduce_per_replica
    assert bool(getattr(build, _compat._MARK, False)) is RAGGED_BUG
    assert bool(getattr(reduce, _compat._MARK, False)) is SCALAR_BUG
    _compat.apply()  # Idempotent: never wraps a wrapper.
    assert tf_trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert tf_trainer.reduce_per_replica is reduce


_SNAPSHOT = r"""
import json, sys
import keras
from keras.src.backend.tensorflow import trainer

def snapshot():
    return [dict(vars(trainer)), dict(vars(trainer.TensorFlowTrainer))]

before = snapshot()
import keras_research
assert keras_research.__file__.startswith(sys.argv[1]), keras_research.__file__
after = snapshot()
print(json.dumps([
    sorted(k for k in set(b) | set(a) if b.get(k, b) is not a.get(k, b))
    for b, a in zip(before, after)
]))
"""


def _changed_by_import(tmp_path, point_gates_away):
    package = tmp_path / "keras_research"
    shutil.copytree(os.path.dirname(keras_research.__file__), package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    if point_gates_away:
        compat = package / "_compat.py"
        source, count = re.subn(r"^(\w+_BUG) = .*$", r"\1 = ((99, 0), None)",
                                compat.read_text(), flags=re.M)
        assert count == 2, "update this test: the gates of _compat changed"
        compat.write_text(source)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c", _SNAPSHOT, str(tmp_path)], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_leaves_keras_trainer_untouched_where_gates_point_away(
        tmp_path):
    assert _changed_by_import(tmp_path, point_gates_away=True) == [[], []]


def test_import_changes_only_the_gated_functions(tmp_path):
    # The control of the test above: the snapshot does see our wrappers.
    module, trainer_class = _changed_by_import(tmp_path,
                                               point_gates_away=False)
    assert module == (["reduce_per_replica"] if SCALAR_BUG else [])
    assert trainer_class == (["_maybe_symbolic_build"] if RAGGED_BUG else [])


# --- 1. Ragged or sparse inputs under a strategy ---------------------------


def test_keras_symbolic_build_fails_on_ragged_batch_exactly_where_gated():
    """Fails once Keras builds from a ragged distributed batch: narrow
    `RAGGED_SYMBOLIC_BUILD_BUG` then."""
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        pytest.skip("needs two replicas")
    ragged = tf.ragged.constant([[1, 2], [3], [], [4, 5, 6]], dtype="int64")
    dataset = tf.data.Dataset.from_tensors(
        (ragged, np.ones((4, 1), "float32")))
    with strategy.scope():
        model = _ragged_sum_model()
    keras_build = _keras_own(tf_trainer.TensorFlowTrainer._maybe_symbolic_build)
    iterator = [(*_head(), iter(strategy.experimental_distribute_dataset(
        dataset)))]
    try:
        keras_build(model, iterator=iterator)
    except (AttributeError, TypeError, ValueError) as error:
        failed = error
    else:
        failed = None
    assert (failed is not None) is RAGGED_BUG, (
        f"Keras {keras.version()}: the ragged symbolic build "
        f"{'fails' if failed else 'works'} ({failed!r}); update "
        "_compat.RAGGED_SYMBOLIC_BUILD_BUG")


@pytest.mark.skipif(not RAGGED_BUG, reason="this Keras has no such bug")
def test_ragged_fit_predict_evaluate_under_mirrored_strategy():
    ragged = tf.ragged.constant([[1, 2], [3], [], [4, 5, 6]], dtype="int64")
    y = np.array([[1.0], [2.0], [0.0], [3.0]], "float32")
    data = tf.data.Dataset.from_tensors((ragged, y))

    single = _ragged_sum_model()
    with _utils.mirrored_strategy().scope():
        mirrored = _ragged_sum_model()
    mirrored.set_weights(single.get_weights())
    for model in (single, mirrored):
        model.fit(data, epochs=2, verbose=0)
    np.testing.assert_allclose(mirrored.get_weights()[0],
                               single.get_weights()[0], rtol=1e-6)
    np.testing.assert_allclose(
        mirrored.predict(data.map(lambda a, b: a), verbose=0),
        single.predict(data.map(lambda a, b: a), verbose=0), rtol=1e-6)
    assert np.isfinite(mirrored.evaluate(data, verbose=0))


@pytest.mark.parametrize("head", [(7,), (7, 8)],
                         ids=["keras<=3.10", "keras>=3.11"])
@pytest.mark.parametrize("ragged", [True, False], ids=["ragged", "dense"])
def test_build_wrapper_reads_both_epoch_iterator_layouts(head, ragged):
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        pytest.skip("needs two replicas")
    x = (tf.ragged.constant([[1, 2], [3], [], [4]], dtype="int64") if ragged
         else tf.constant([[1], [3], [0], [4]], dtype="int64"))
    batch = _distributed_batch(
        strategy, tf.data.Dataset.from_tensors((x, tf.ones((4, 1)))))
    calls = []

    def keras_fn(self, iterator=None, data_batch=None):
        calls.append((list(iterator or ()), data_batch))

    model = keras.Sequential()
    model._distribute_strategy = strategy
    _compat._wrap_maybe_symbolic_build(keras_fn)(
        model, iterator=[(*head, iter([batch]))])
    ((iterator, data_batch),) = calls
    if ragged:  # Ours: Keras builds from the first replica's batch.
        assert iterator == []
        assert isinstance(data_batch[0], tf.RaggedTensor)
        assert data_batch[0].to_list() == [[1, 2], [3]]
    else:  # Keras's: the same iterator layout, yielding the same batch.
        ((*replayed_head, it),) = iterator
        assert tuple(replayed_head) == head and data_batch is None
        assert next(it) is batch


def test_mixed_distributed_batch_still_takes_keras_branch(monkeypatch):
    """A batch with distributed and plain leaves goes to Keras unchanged."""
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        pytest.skip("needs two replicas")
    x = _distributed_batch(strategy, tf.data.Dataset.from_tensors(
        tf.ragged.constant([[1, 2], [3], [], [4]], dtype="int64")))
    assert isinstance(x, tf.distribute.DistributedValues)
    batch = (x, tf.ones((4, 1)))  # A plain tensor beside a distributed one.
    with strategy.scope():
        model = _ragged_sum_model()
    recorder = _Recorder()
    monkeypatch.setattr(model, "_symbolic_build", recorder)
    model._maybe_symbolic_build(iterator=[(*_head(), iter([batch]))])
    assert recorder.batches == [batch]
    assert recorder.batches[0][0] is x  # Keras's "else" branch: as it came.


def test_all_distributed_dense_batch_still_takes_keras_branch(monkeypatch):
    """A dense, fully distributed batch is averaged by Keras as before."""
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        pytest.skip("needs two replicas")
    batch = _distributed_batch(strategy, tf.data.Dataset.from_tensors(
        (tf.constant([[1.0], [3.0], [5.0], [7.0]]), tf.ones((4, 1)))))
    with strategy.scope():
        model = _ragged_sum_model()
    recorder = _Recorder()
    monkeypatch.setattr(model, "_symbolic_build", recorder)
    model._maybe_symbolic_build(iterator=[(*_head(), iter([batch]))])
    ((x, y),) = recorder.batches
    # Keras's reduce("MEAN", axis=None): the mean of the replicas' batches.
    np.testing.assert_allclose(x.numpy(), [[3.0], [5.0]])


# --- 2. Scalar logs under MultiWorkerMirroredStrategy ----------------------


def _per_replica(strategy, fn):
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(fn(context.replica_id_in_sync_group),
                                    "float32"))


@pytest.fixture
def multi_worker(monkeypatch):
    """A MirroredStrategy that Keras's reduction takes for a multi-worker one.

    The real two-worker run is `tests/reliability/test_multi_worker.py`
    (slow); here Keras's test for multi-worker mode answers yes.
    """
    strategy = _utils.mirrored_strategy()
    if strategy.num_replicas_in_sync < 2:
        pytest.skip("needs two replicas")
    monkeypatch.setattr(tf_trainer, "_collective_all_reduce_multi_worker",
                        lambda s: s is strategy)
    return strategy


def test_keras_reduces_scalar_logs_along_axis_0_exactly_where_gated(
        multi_worker):
    """Fails once Keras reduces scalar multi-worker logs: narrow
    `MULTI_WORKER_SCALAR_LOGS_BUG` then."""
    keras_reduce = _keras_own(tf_trainer.reduce_per_replica)
    logs = {"loss": _per_replica(multi_worker, lambda i: 1.0 + 2.0 * i)}
    try:
        keras_reduce(logs, multi_worker, "auto")
    except (tf.errors.InvalidArgumentError, ValueError) as error:
        failed = error
    else:
        failed = None
    assert (failed is not None) is SCALAR_BUG, (
        f"Keras {keras.version()}: reducing scalar multi-worker logs "
        f"{'fails' if failed else 'works'} ({failed!r}); update "
        "_compat.MULTI_WORKER_SCALAR_LOGS_BUG")


@pytest.mark.skipif(not SCALAR_BUG, reason="this Keras has no such bug")
def test_scalar_logs_are_averaged_and_the_rest_left_to_keras(multi_worker):
    keras_reduce = _keras_own(tf_trainer.reduce_per_replica)
    vector = _per_replica(multi_worker, lambda i: [1.0 + i, 10.0 * i])
    logs = {"loss": _per_replica(multi_worker, lambda i: 1.0 + 2.0 * i),
            "vector": vector}
    reduced = tf_trainer.reduce_per_replica(logs, multi_worker, "auto")
    assert float(reduced["loss"]) == 2.0  # The mean over the replicas.
    np.testing.assert_allclose(  # Keras's own axis=0 reduction.
        reduced["vector"], keras_reduce(vector, multi_worker, "mean"))
    for reduction in ("concat", "first"):
        np.testing.assert_allclose(
            tf_trainer.reduce_per_replica(vector, multi_worker, reduction),
            keras_reduce(vector, multi_worker, reduction))
