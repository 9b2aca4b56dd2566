"""The components together under MirroredStrategy over 2 logical CPUs.

Each component's own tests run it under `tf.distribute.MirroredStrategy`;
this checks the two multi-worker models (every training component
together) in one process: two replicas on the same global batches end
with the weights of one device, to float32 round-off.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests.reliability import _models


@pytest.mark.parametrize("name", ["text", "text-fused", "scope"])
def test_two_replicas_match_one_device(name):
    batches = _models.ragged_batches(6, 16, seed=11)
    model, callbacks = _models.MODELS[name]()
    model.fit(_models.dataset(batches), epochs=1, callbacks=callbacks,
              verbose=0)
    reference = _models.weights_of(model)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model, callbacks = _models.MODELS[name]()
    history = model.fit(_models.dataset(batches), epochs=1,
                        callbacks=callbacks, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    got = _models.weights_of(model)
    assert len(got) == len(reference)
    moved = 0
    for i, (a, r) in enumerate(zip(got, reference)):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=2e-5,
                                   err_msg=f"weight {i}")
    # Training changed the weights (a vacuous run would also "match").
    model0, _ = _models.MODELS[name]()
    for a, w in zip(got, _models.weights_of(model0)):
        moved += not np.allclose(a, w)
    assert moved == len(got)
