"""Work-arounds for Keras 3 bugs that break our components (isolated).

This is the one module of keras_research that reaches into Keras internals
to fix a Keras bug (the weight-creator scope has its own documented hook).
Each fix is applied once at import, narrowly, only when the bug is present,
and is covered by `tests/test_compat.py`.

1. `fit`/`evaluate`/`predict` under a `tf.distribute` strategy crash on
   ragged or sparse inputs (Keras 3.15: `'RaggedTensor' object has no
   attribute 'device'`): before building, Keras averages the first
   per-replica batch with `strategy.reduce("MEAN", ...)` just to read its
   shapes, and that reduction rejects composite tensors. The fix takes the
   first replica's batch instead, which has the same shapes and dtypes, and
   keeps the raggedness that Keras's symbolic build needs.
2. `fit` under `tf.distribute.MultiWorkerMirroredStrategy` crashes on its
   first step (Keras 3.15: "Invalid reduction dimension 0 for input with 0
   dimensions"): the train step averages its logs across workers with
   `strategy.reduce("MEAN", v, axis=0)`, and the logs are scalars. The fix
   reduces scalars with `axis=None` (the mean over workers) and leaves
   every other case to Keras. Covered by
   `tests/reliability/test_multi_worker.py` (two worker processes; slow).
"""

import tensorflow as tf

try:  # The private module this fix patches; absent in other Keras layouts.
    from keras.src.backend.tensorflow import trainer as _tf_trainer
except ImportError:  # pragma: no cover
    _tf_trainer = None


def _first_replica(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: _first_replica(self.distribute_strategy, v), batch
            )
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


_original_reduce_per_replica = getattr(_tf_trainer, "reduce_per_replica", None)


def _reduce_per_replica(values, strategy, reduction="auto"):
    if reduction not in ("auto", "mean") or not (
        _tf_trainer._collective_all_reduce_multi_worker(strategy)
    ):
        return _original_reduce_per_replica(values, strategy, reduction)

    def _reduce(v):
        rank = _first_replica(strategy, v).shape.rank
        return strategy.reduce("MEAN", v, axis=0 if rank else None)

    return tf.nest.map_structure(_reduce, values)


def apply():
    """Applies the fixes above (idempotent)."""
    trainer = getattr(_tf_trainer, "TensorFlowTrainer", None)
    if trainer is None or getattr(trainer, "_keras_research_patched", False):
        return
    if not hasattr(trainer, "_maybe_symbolic_build"):  # pragma: no cover
        return
    trainer._maybe_symbolic_build = _maybe_symbolic_build
    if _original_reduce_per_replica is not None and hasattr(
        _tf_trainer, "_collective_all_reduce_multi_worker"
    ):
        _tf_trainer.reduce_per_replica = _reduce_per_replica
    trainer._keras_research_patched = True


apply()
