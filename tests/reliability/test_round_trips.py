"""Every public component survives every saving format, and serving.

For each model below (together they use every public layer, scope,
optimizer, activation and the callback): a few `fit` steps, then

- `keras_research.testing.run_model_saving_test`: `.keras` with
  `safe_mode=True` and no `custom_objects`, `save_weights`/`load_weights`
  and `tf.train.Checkpoint`, outputs and weights bit-equal;
- the `.keras` file also restores the optimizer's state bit-exactly, and
  training continues identically after loading;
- an exported SavedModel, reloaded with `tf.saved_model.load` in a fresh
  process that never imports keras_research, gives outputs
  bit-equal to the in-memory model's run as a graph (`predict`; eager
  execution agrees to float32 round-off). Ragged-id models are exported with a
  `serve(values, row_splits)` endpoint (SavedModel signatures take dense
  tensors only); dense models with `model.export()`.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research.testing import run_model_saving_test
from tests.optimizers._momentum_sgd import MomentumSGD
from tests.reliability import _models

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@keras.saving.register_keras_serializable(package="reliability_tests")
@keras_research.activations.fused
def shifted_silu(x):
    return x * tf.sigmoid(x) - 0.1


def _dense_data(n=32, d=16, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (np.abs(x).sum(axis=1) * 3).astype("int64") % classes
    return x, y.astype("int32")


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _text():
    model, callbacks = _models.text_model()
    return model, callbacks, "ragged"


def _bags():
    """The other RaggedEmbeddingBag modes, with PowerMomentum."""
    inputs = keras.Input(shape=(None,), dtype="int64", ragged=True,
                         name="ids")
    a = keras_research.layers.RaggedEmbeddingBag(
        _models.VOCAB, 8, "max", max_norm=1.0, padding_id=0,
        invalid_ids="ignore", name="bag_max",
    )(inputs)
    b = keras_research.layers.RaggedEmbeddingBag(
        _models.VOCAB, 8, "sqrtn", name="bag_sqrtn"
    )(inputs)
    c = keras_research.layers.RaggedEmbeddingBag(
        _models.VOCAB, 8, "sum", embeddings_regularizer="l2", name="bag_sum"
    )(inputs)
    x = keras.layers.Concatenate()([a, b, c])
    x = keras_research.layers.FactorizedDense(
        16, rank=0.5, activation=keras_research.activations.gelu_tanh
    )(x)
    outputs = keras.layers.Dense(_models.NUM_CLASSES)(x)
    model = keras.Model(inputs, outputs)
    _compile(model, keras_research.optimizers.PowerMomentum(1e-2))
    return model, [], "ragged"


def _scope():
    model, callbacks = _models.scope_model()
    return model, callbacks, "ragged"


def _factorize():
    """`factorize` of a trained dense model; snake/silu activations."""
    x, y = _dense_data()
    dense = keras.Sequential([
        keras.Input((16,), name="features"),
        keras.layers.Dense(64, activation=keras_research.activations.snake),
        keras.layers.Dense(64, activation=keras_research.activations.silu),
        keras.layers.Dense(_models.NUM_CLASSES),
    ])
    _compile(dense, keras_research.optimizers.Adam(1e-2))
    dense.fit(x, y, epochs=1, batch_size=16, verbose=0)
    small, report = keras_research.factorize(dense, rank=4, min_size=0)
    assert len(report) > 0
    _compile(small, keras_research.optimizers.Adan(1e-2))
    return small, [], "dense"


def _creator():
    """`weight_creator_scope`, a user CustomOptimizer, fused activations."""
    seen = []

    def creator(next_creator, **kwargs):
        seen.append(kwargs["name"])
        if kwargs["name"] == "bias":
            kwargs["initializer"] = "ones"
        return next_creator(**kwargs)

    with keras_research.weight_creator_scope(creator):
        model = keras.Sequential([
            keras.Input((16,), name="features"),
            keras.layers.Dense(
                32,
                activation=keras_research.activations.silu_softplus_tanh_squared,
            ),
            keras.layers.Dense(32, activation=shifted_silu),
            keras.layers.Dense(
                32, activation=keras_research.activations.fused(
                    keras_research.activations.mish),
            ),
            keras.layers.Dense(_models.NUM_CLASSES),
        ])
    assert "bias" in seen
    _compile(model, MomentumSGD(1e-2))
    return model, [], "dense"


def _jacobian_dense():
    """JacobianRegularizer with respect to the input (projection)."""
    model = keras.Sequential([
        keras.Input((16,), name="features"),
        keras_research.layers.FactorizedDense(32, rank=4, activation="tanh"),
        keras.layers.Dense(_models.NUM_CLASSES),
    ])
    _compile(model, keras_research.optimizers.Adam(1e-2))
    callbacks = [keras_research.callbacks.JacobianRegularizer(
        0.1, method="projection", num_projections=2)]
    return model, callbacks, "dense"


BUILDERS = {
    "text": _text,
    "bags": _bags,
    "scope": _scope,
    "factorize": _factorize,
    "creator": _creator,
    "jacobian_dense": _jacobian_dense,
}


def _trained(name):
    """A model trained for 3 steps, and (x, y) batches of its data."""
    keras.utils.set_random_seed(7)
    model, callbacks, kind = BUILDERS[name]()
    if kind == "ragged":
        batches = _models.ragged_batches(4, 8, seed=3)
        model.fit(_models.dataset(batches[:3]), epochs=1,
                  callbacks=callbacks, verbose=0)
        return model, batches[3], kind, callbacks
    x, y = _dense_data(32)
    model.fit(x[:24], y[:24], batch_size=8, epochs=1, callbacks=callbacks,
              verbose=0, shuffle=False)
    return model, (x[24:], y[24:]), kind, callbacks


def _export(model, kind, path):
    if kind == "dense":
        model.export(path, verbose=False)
        return
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        lambda values, row_splits: model(
            tf.RaggedTensor.from_row_splits(values, row_splits),
            training=False,
        ),
        input_signature=[
            tf.TensorSpec([None], tf.int64, name="values"),
            tf.TensorSpec([None], tf.int64, name="row_splits"),
        ],
    )
    archive.write_out(path, verbose=False)


def _serving_inputs(model, kind, x):
    if kind == "dense":
        return {model.inputs[0].name: x}
    return {"values": x.values.numpy(), "row_splits": x.row_splits.numpy()}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_saving_formats_and_optimizer_state(name, tmp_path):
    model, (x, y), kind, callbacks = _trained(name)
    run_model_saving_test(model, x)

    # The .keras file also carries the optimizer state, bit-exactly, and
    # training resumes as if uninterrupted.
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer) is type(model.optimizer)
    a = [v.numpy() for v in model.optimizer.variables]
    b = [v.numpy() for v in loaded.optimizer.variables]
    assert len(a) == len(b) > 2
    for i, (u, v) in enumerate(zip(a, b)):
        np.testing.assert_array_equal(u, v, err_msg=f"optimizer var {i}")
    assert int(loaded.optimizer.iterations) == 3
    for m in (model, loaded):
        m.train_on_batch(x, y)
    for i, (u, v) in enumerate(zip(model.weights, loaded.weights)):
        np.testing.assert_array_equal(u.numpy(), v.numpy(),
                                      err_msg=f"{name} weight {i} after "
                                      "a step of the reloaded model")


def test_exported_models_serve_without_keras_research(tmp_path):
    expected = {}
    for name in sorted(BUILDERS):
        model, (x, y), kind, _ = _trained(name)
        _export(model, kind, str(tmp_path / name))
        np.savez(tmp_path / f"{name}.in.npz",
                 **_serving_inputs(model, kind, x))
        expected[name] = (
            keras.ops.convert_to_numpy(model(x)),
            model.predict(x, verbose=0, batch_size=len(y)),
        )
        keras.backend.clear_session()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    # A fresh interpreter that cannot see the repository: running from
    # tmp_path, keras_research is importable only if pip-installed, and
    # the server fails if it gets imported at all.
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "reliability",
                                      "_serve.py"), str(tmp_path)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    for name, (eager, graph) in expected.items():
        with np.load(tmp_path / f"{name}.out.npz") as f:
            got = f["output"]
        # Bit-equal to the in-memory model run as a graph (`predict`), as
        # serving runs it; eager op-by-op execution differs from any graph
        # by float32 round-off where Grappler fuses ops (seen: 1.5e-7).
        np.testing.assert_array_equal(got, graph, err_msg=name)
        np.testing.assert_allclose(got, eager, rtol=1e-6, atol=1e-6,
                                   err_msg=name)
