"""Work-arounds for Keras 3 bugs that break our components (isolated).

This is the one module of keras_research that reaches into Keras internals
to fix a Keras bug (the weight-creator scope has its own documented hook;
`docs/INTERNALS.md` lists every internal the package touches). Each fix:

- is applied at import only on the Keras releases that have the bug (the
  `*_BUG` ranges below); on any other Keras, importing keras_research
  leaves `keras.src.backend.tensorflow.trainer` exactly as it was;
- wraps the Keras function and handles only the case that fails, falling
  through to Keras for everything else;
- has a test in `tests/test_compat.py` that calls Keras's own function and
  fails on the day a Keras release no longer has the bug, so that the
  range can be closed.

1. `fit`/`evaluate`/`predict` under a `tf.distribute` strategy crash on
   ragged or sparse inputs (Keras 3.15: `'RaggedTensor' object has no
   attribute 'device'`): before building, `_maybe_symbolic_build` averages
   the first per-replica batch with `strategy.reduce("MEAN", ...)` just to
   read its shapes, and that reduction rejects composite tensors. When
   every leaf of the batch is distributed and one of them is ragged or
   sparse, the fix builds from the first replica's batch instead, which has
   the same shapes and dtypes and keeps the raggedness that Keras's
   symbolic build needs. Any other batch goes to Keras unchanged. The
   epoch iterator yields `(step, iterator)` up to Keras 3.10 and
   `(begin, end, iterator)` from 3.11; both are handled.
2. `fit` under `tf.distribute.MultiWorkerMirroredStrategy` crashes on its
   first step (Keras 3.15: "Invalid reduction dimension 0 for input with 0
   dimensions"): `reduce_per_replica` averages the train step's logs across
   workers with `strategy.reduce("MEAN", v, axis=0)`, and the logs are
   scalars. The fix reduces scalars with `axis=None` (the mean over
   workers) and leaves every other value, reduction and strategy to Keras.
   Also covered end to end by `tests/reliability/test_multi_worker.py`
   (two worker processes; slow).
"""

import functools

import keras
import tensorflow as tf

from keras_research._backend import keras_version

try:  # The private module these fixes wrap; absent in other Keras layouts.
    from keras.src.backend.tensorflow import trainer as _tf_trainer
except ImportError:  # pragma: no cover
    _tf_trainer = None

# The Keras releases with each bug: (first affected, first fixed), `None`
# while no release fixes it. Checked on Keras 3.10.0 to 3.15.1.
RAGGED_SYMBOLIC_BUILD_BUG = ((3, 0), None)
MULTI_WORKER_SCALAR_LOGS_BUG = ((3, 0), None)

_MARK = "_keras_research_fix"


def has_bug(bug, version=None):
    """Whether the Keras release `version` (default: installed) has `bug`."""
    first, fixed = bug
    version = keras_version() if version is None else version
    return first <= version and (fixed is None or version < fixed)


def _first_replica(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _is_composite(value):
    return isinstance(value, (tf.RaggedTensor, tf.SparseTensor))


def _wrap_maybe_symbolic_build(keras_fn):
    @functools.wraps(keras_fn)
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None or iterator is None:
            return keras_fn(self, iterator=iterator, data_batch=data_batch)
        # Keras reads one batch: `for _, it in iterator` up to Keras 3.10,
        # `for _, _, it in iterator` from 3.11. Read it the same way, then
        # hand Keras an iterator that yields it again.
        replay = []
        for *head, it in iterator:
            batch = next(it)
            replay = [(*head, iter([batch]))]
            break
        if replay:
            strategy = self.distribute_strategy
            leaves = keras.tree.flatten(batch)
            if all(
                isinstance(v, tf.distribute.DistributedValues) for v in leaves
            ) and any(
                _is_composite(_first_replica(strategy, v)) for v in leaves
            ):
                # The failing branch: Keras would average the replicas.
                first = keras.tree.map_structure(
                    lambda v: _first_replica(strategy, v), batch
                )
                return keras_fn(self, data_batch=first)
        return keras_fn(self, iterator=replay, data_batch=data_batch)

    setattr(_maybe_symbolic_build, _MARK, True)
    return _maybe_symbolic_build


def _wrap_reduce_per_replica(keras_fn):
    @functools.wraps(keras_fn)
    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction not in ("auto", "mean") or not (
            _tf_trainer._collective_all_reduce_multi_worker(strategy)
        ):
            return keras_fn(values, strategy, reduction)

        def _reduce(v):
            if _first_replica(strategy, v).shape.rank == 0:
                # The failing branch: Keras would reduce along axis 0.
                return strategy.reduce("MEAN", v, axis=None)
            return keras_fn(v, strategy, reduction)

        return tf.nest.map_structure(_reduce, values)

    setattr(reduce_per_replica, _MARK, True)
    return reduce_per_replica


def apply():
    """Applies the fixes that the installed Keras needs (idempotent)."""
    trainer = getattr(_tf_trainer, "TensorFlowTrainer", None)
    if trainer is None:  # pragma: no cover
        return
    build = getattr(trainer, "_maybe_symbolic_build", None)
    if (
        has_bug(RAGGED_SYMBOLIC_BUILD_BUG)
        and build is not None
        and not getattr(build, _MARK, False)
    ):
        trainer._maybe_symbolic_build = _wrap_maybe_symbolic_build(build)
    reduce = getattr(_tf_trainer, "reduce_per_replica", None)
    if (
        has_bug(MULTI_WORKER_SCALAR_LOGS_BUG)
        and reduce is not None
        and hasattr(_tf_trainer, "_collective_all_reduce_multi_worker")
        and not getattr(reduce, _MARK, False)
    ):
        _tf_trainer.reduce_per_replica = _wrap_reduce_per_replica(reduce)


apply()
