"""Census of the bad inputs keras_research rejects, and how it says so.

Every case calls a public entry point with one bad argument (or bad data)
and must raise the stated exception with a message that names the
argument and repeats the value received. The table of all cases is
`docs/BAD_INPUTS.md`; regenerate it with

    KR_WRITE_BAD_INPUTS=1 python -m pytest tests/reliability/test_bad_inputs.py

Malformed `.keras` files are part of the census: loading fails with a
clear error and runs no code from the file (`safe_mode=True`).
"""

import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_research
from keras_research import activations, callbacks, layers, optimizers
from keras_research.testing import run_model_saving_test

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TABLE = os.path.join(ROOT, "docs", "BAD_INPUTS.md")

FD = layers.FactorizedDense
REB = layers.RaggedEmbeddingBag


def _build_fd(units, rank, input_dim):
    FD(units, rank=rank)(np.ones((2, input_dim), "float32"))


def _bag(**kwargs):
    return REB(10, 4, **kwargs)


def _unbuilt_dense():
    return keras.layers.Dense(4)


def _built_dense():
    d = keras.layers.Dense(4)
    d.build((None, 8))
    return d


def _small_model(compiled=True, inputs=None):
    inputs = inputs or keras.Input((4,), name="x")
    h = keras.layers.Dense(3, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(h))
    if compiled:
        model.compile(optimizer="sgd", loss="mse")
    return model


def _fit_with(callback, model=None):
    model = model or _small_model()
    x = np.ones((4, 4), "float32")
    model.fit(x, np.ones((4, 2), "float32"), epochs=1, verbose=0,
              callbacks=[callback])


def _begin_uncompiled():
    callback = callbacks.JacobianRegularizer()
    callback.set_model(_small_model(compiled=False))
    callback.on_train_begin()


def _fused_square(x):
    return x * x


def _fused_shape_changer(x):
    return tf.reduce_sum(x, axis=-1)


def _fused_lambda_config():
    activations.fused(lambda x: x * 2.0).get_config()


def _bad_slot_name():
    class Bad(optimizers.CustomOptimizer):
        def build(self, var_list):
            super().build(var_list)
            for v in var_list:
                self.add_slot(v, "")

        def update_step(self, gradient, variable, learning_rate):
            pass

    Bad(0.1).build([keras.Variable(np.ones(2, "float32"))])


def _missing_slot():
    class Bad(optimizers.CustomOptimizer):
        def build(self, var_list):
            super().build(var_list)

        def update_step(self, gradient, variable, learning_rate):
            self.get_slot(variable, "velocity")

    v = keras.Variable(np.ones(2, "float32"))
    opt = Bad(0.1)
    opt.apply([tf.ones(2)], [v])


def _no_update_step():
    class NoUpdate(optimizers.CustomOptimizer):
        pass

    NoUpdate(0.1)


def _save_keras(path, model):
    model.save(path)
    return path


def _rewrite_config(path, change):
    """Rewrites `config.json` inside a `.keras` zip with `change(config)`."""
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    change(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def _layers_of(config):
    return config["config"]["layers"]


def _keras_unknown_class(tmp):
    path = _save_keras(os.path.join(tmp, "unknown.keras"), _fd_model())

    def change(config):
        layer = _layers_of(config)[1]
        layer["class_name"] = "NoSuchLayer"
        layer["registered_name"] = "keras_research>NoSuchLayer"
        layer["module"] = "keras_research.layers.no_such_layer"

    _rewrite_config(path, change)
    keras.saving.load_model(path, safe_mode=True)


def _keras_truncated(tmp):
    path = _save_keras(os.path.join(tmp, "full.keras"), _fd_model())
    data = open(path, "rb").read()
    cut = os.path.join(tmp, "truncated.keras")
    with open(cut, "wb") as f:
        f.write(data[: len(data) // 2])
    keras.saving.load_model(cut, safe_mode=True)


SENTINEL = "KR_BAD_INPUT_SENTINEL"


def _keras_lambda_code(tmp):
    """A Lambda layer whose (marshalled) code would create a file."""
    marker = os.path.join(tmp, "code_ran")
    os.environ[SENTINEL] = marker
    inputs = keras.Input((4,))
    out = keras.layers.Lambda(
        lambda x: (open(__import__("os").environ["KR_BAD_INPUT_SENTINEL"],
                        "w").close(), x)[1]
    )(inputs)
    out = FD(2, rank=1)(out)
    model = keras.Model(inputs, out)
    if os.path.exists(marker):
        os.remove(marker)
    path = _save_keras(os.path.join(tmp, "lambda.keras"), model)
    try:
        keras.saving.load_model(path, safe_mode=True)
    finally:
        assert not os.path.exists(marker), "code from the file ran"


def _keras_foreign_module(tmp):
    """A config naming a class in a non-Keras module: never imported."""
    path = _save_keras(os.path.join(tmp, "foreign.keras"), _fd_model())

    def change(config):
        layer = _layers_of(config)[1]
        layer["class_name"] = "Evil"
        layer["registered_name"] = None
        layer["module"] = "tests.reliability._import_sentinel"

    _rewrite_config(path, change)
    try:
        keras.saving.load_model(path, safe_mode=True)
    finally:
        import sys

        assert "tests.reliability._import_sentinel" not in sys.modules


def _fd_model():
    inputs = keras.Input((4,), name="x")
    return keras.Model(inputs, FD(2, rank=1, name="fd")(inputs))


# (component, argument, value as shown, trigger, exception, must contain)
# `must contain` defaults to [argument, value].
CASES = [
    # FactorizedDense
    ("FactorizedDense", "units", "0", lambda _: FD(0, rank=1)),
    ("FactorizedDense", "units", "-3", lambda _: FD(-3, rank=1)),
    ("FactorizedDense", "units", "2.5", lambda _: FD(2.5, rank=1)),
    ("FactorizedDense", "units", "True", lambda _: FD(True, rank=1)),
    ("FactorizedDense", "rank", "0", lambda _: FD(4, rank=0)),
    ("FactorizedDense", "rank", "1.5", lambda _: FD(4, rank=1.5)),
    ("FactorizedDense", "rank", "0.0", lambda _: FD(4, rank=0.0)),
    ("FactorizedDense", "rank", "'4'", lambda _: FD(4, rank="4")),
    ("FactorizedDense", "rank", "None", lambda _: FD(4, rank=None)),
    ("FactorizedDense", "rank", "8",
     lambda _: _build_fd(4, 8, 16)),  # rank > min(input_dim, units) = 4
    ("FactorizedDense", "left_initializer", "'nope'",
     lambda _: FD(4, rank=1, left_initializer="nope")),
    ("FactorizedDense", "right_regularizer", "'nope'",
     lambda _: FD(4, rank=1, right_regularizer="nope")),
    ("FactorizedDense", "bias_constraint", "'nope'",
     lambda _: FD(4, rank=1, bias_constraint="nope")),
    ("FactorizedDense.from_dense", "dense", "'dense'",
     lambda _: FD.from_dense("dense", rank=1)),
    ("FactorizedDense.from_dense", "dense", "unbuilt Dense",
     lambda _: FD.from_dense(_unbuilt_dense(), rank=1), ValueError,
     ["`dense`", "not built"]),
    ("FactorizedDense.from_dense", "rank", "9",
     lambda _: FD.from_dense(_built_dense(), rank=9)),
    # RaggedEmbeddingBag
    ("RaggedEmbeddingBag", "input_dim", "0", lambda _: REB(0, 4)),
    ("RaggedEmbeddingBag", "input_dim", "1.5", lambda _: REB(1.5, 4)),
    ("RaggedEmbeddingBag", "output_dim", "-1", lambda _: REB(10, -1)),
    ("RaggedEmbeddingBag", "combiner", "'median'",
     lambda _: _bag(combiner="median")),
    ("RaggedEmbeddingBag", "max_norm", "0", lambda _: _bag(max_norm=0)),
    ("RaggedEmbeddingBag", "max_norm", "-1.0",
     lambda _: _bag(max_norm=-1.0)),
    ("RaggedEmbeddingBag", "padding_id", "1.5",
     lambda _: _bag(padding_id=1.5)),
    ("RaggedEmbeddingBag", "invalid_ids", "'clip'",
     lambda _: _bag(invalid_ids="clip")),
    ("RaggedEmbeddingBag", "inputs.dtype", "float32",
     lambda _: _bag()(tf.ragged.constant([[1.0, 2.0]]))),
    ("RaggedEmbeddingBag", "inputs.shape", "(3,)",
     lambda _: _bag()(tf.constant([1, 2, 3]))),
    ("RaggedEmbeddingBag", "inputs (ids)", "12",
     lambda _: _bag()(tf.ragged.constant([[1, 12], [3]])), ValueError,
     ["input_dim=10", "12", "invalid_ids"]),
    ("RaggedEmbeddingBag", "inputs (ids)", "-1",
     lambda _: _bag()(tf.ragged.constant([[1, -1], [3]])), ValueError,
     ["input_dim=10", "-1", "invalid_ids"]),
    ("RaggedEmbeddingBag", "inputs (ids, padding_id=0)", "10",
     lambda _: _bag(padding_id=0)(tf.constant([[0, 10]])), ValueError,
     ["input_dim=10", "padding_id=0", "10"]),
    ("RaggedEmbeddingBag", "weights", "dense tensor for ragged ids",
     lambda _: _bag()(tf.ragged.constant([[1, 2], [3]]),
                      weights=tf.ones((2, 2))), ValueError,
     ["`weights`", "tf.RaggedTensor"]),
    ("RaggedEmbeddingBag", "weights.shape", "(2, 3)",
     lambda _: _bag()(tf.constant([[1, 2], [3, 4]]),
                      weights=tf.ones((2, 3)))),
    ("RaggedEmbeddingBag", "inputs", "list",
     lambda _: _bag()([tf.constant([[1]]), tf.constant([[2]])]),
     ValueError, ["RaggedEmbeddingBag", "list"]),
    # Scopes and factorize
    ("factorized_scope", "rank", "0",
     lambda _: keras_research.factorized_scope(rank=0)),
    ("factorized_scope", "rank", "2.0",
     lambda _: keras_research.factorized_scope(rank=2.0)),
    ("factorized_scope", "min_size", "-1",
     lambda _: keras_research.factorized_scope(rank=2, min_size=-1)),
    ("factorized_scope", "filter", "'dense'",
     lambda _: keras_research.factorized_scope(rank=2, filter="dense")),
    ("weight_creator_scope", "creator", "'ones'",
     lambda _: keras_research.weight_creator_scope("ones")),
    ("factorize", "model", "'model'",
     lambda _: keras_research.factorize("model", rank=2)),
    ("factorize", "rank", "2",
     lambda _: keras_research.factorize(_fd_model(), rank=2, energy=0.9),
     ValueError, ["`rank`", "`energy`", "rank=2", "energy=0.9"]),
    ("factorize", "energy", "1.5",
     lambda _: keras_research.factorize(_fd_model(), energy=1.5)),
    ("factorize", "energy", "0.0",
     lambda _: keras_research.factorize(_fd_model(), energy=0.0)),
    ("factorize", "model", "unbuilt Sequential",
     lambda _: keras_research.factorize(
         keras.Sequential([keras.layers.Dense(2)], name="unbuilt"), rank=1),
     ValueError, ["`model`", "'unbuilt'", "not built"]),
    # Optimizers
    ("Adam", "learning_rate", "-0.1",
     lambda _: optimizers.Adam(-0.1)),
    ("Adam", "learning_rate", "nan",
     lambda _: optimizers.Adam(float("nan"))),
    ("Adam", "learning_rate", "'fast'",
     lambda _: optimizers.Adam("fast")),
    ("Adam", "beta_1", "1.0", lambda _: optimizers.Adam(beta_1=1.0)),
    ("Adam", "beta_2", "-0.5", lambda _: optimizers.Adam(beta_2=-0.5)),
    ("Adam", "epsilon", "0", lambda _: optimizers.Adam(epsilon=0)),
    ("Adam", "amsgrad", "'yes'", lambda _: optimizers.Adam(amsgrad="yes")),
    ("Adam", "fused_kernel", "'yes'",
     lambda _: optimizers.Adam(fused_kernel="yes")),
    ("Adam", "weight_decay", "-1.0",
     lambda _: optimizers.Adam(weight_decay=-1.0)),
    ("Adan", "beta_3", "1.5", lambda _: optimizers.Adan(beta_3=1.5)),
    ("Adan", "epsilon", "inf",
     lambda _: optimizers.Adan(epsilon=float("inf"))),
    ("PowerMomentum", "power", "0",
     lambda _: optimizers.PowerMomentum(power=0)),
    ("PowerMomentum", "momentum", "1.2",
     lambda _: optimizers.PowerMomentum(momentum=1.2)),
    ("CustomOptimizer", "jit_compile", "1",
     lambda _: optimizers.Adam(jit_compile=1)),
    ("CustomOptimizer subclass", "update_step", "NoUpdate",
     lambda _: _no_update_step(), TypeError, ["update_step", "NoUpdate"]),
    ("CustomOptimizer.add_slot", "name", "''", lambda _: _bad_slot_name()),
    ("CustomOptimizer.get_slot", "name", "'velocity'",
     lambda _: _missing_slot()),
    # JacobianRegularizer
    ("JacobianRegularizer", "weight", "-1.0",
     lambda _: callbacks.JacobianRegularizer(-1.0)),
    ("JacobianRegularizer", "weight", "nan",
     lambda _: callbacks.JacobianRegularizer(float("nan"))),
    ("JacobianRegularizer", "weight", "'big'",
     lambda _: callbacks.JacobianRegularizer("big")),
    ("JacobianRegularizer", "method", "'fd'",
     lambda _: callbacks.JacobianRegularizer(method="fd")),
    ("JacobianRegularizer", "num_projections", "0",
     lambda _: callbacks.JacobianRegularizer(num_projections=0)),
    ("JacobianRegularizer", "wrt", "3",
     lambda _: callbacks.JacobianRegularizer(wrt=3)),
    ("JacobianRegularizer", "per_example", "'yes'",
     lambda _: callbacks.JacobianRegularizer(per_example="yes")),
    ("JacobianRegularizer", "log_norm", "1",
     lambda _: callbacks.JacobianRegularizer(log_norm=1)),
    ("JacobianRegularizer (fit)", "wrt", "'missing'",
     lambda _: _fit_with(callbacks.JacobianRegularizer(wrt="missing"))),
    ("JacobianRegularizer (fit)", "weight", "-2.0 from a schedule",
     lambda _: _fit_with(callbacks.JacobianRegularizer(
         lambda epoch, step: -2.0)), ValueError, ["`weight`", "-2.0"]),
    ("JacobianRegularizer (fit)", "model", "not compiled",
     lambda _: _begin_uncompiled(), ValueError, ["compile", "not compiled"]),
    # Activations
    ("activations.fused", "function", "3",
     lambda _: activations.fused(3)),
    ("fused activation (call)", "x", "int32",
     lambda _: activations.fused(_fused_square)(tf.constant([1, 2]))),
    ("fused activation (call)", "function", "_fused_shape_changer",
     lambda _: activations.fused(_fused_shape_changer)(tf.ones((2, 3))),
     ValueError, ["_fused_shape_changer", "shape"]),
    ("fused activation (save)", "function", "lambda",
     lambda _: _fused_lambda_config(), ValueError, ["lambda", "def"]),
    # testing
    ("testing.run_model_saving_test", "model", "'model'",
     lambda _: run_model_saving_test("model", np.ones((1, 1)))),
    ("testing.run_model_saving_test", "model", "unbuilt",
     lambda _: run_model_saving_test(
         keras.Sequential([keras.layers.Dense(1)], name="nob"),
         np.ones((1, 1))), ValueError, ["`model`", "nob"]),
    # Malformed .keras files (safe_mode=True)
    (".keras file", "config class_name", "NoSuchLayer",
     _keras_unknown_class, (TypeError, ValueError),
     ["NoSuchLayer"]),
    (".keras file", "file", "truncated zip",
     _keras_truncated, (ValueError, OSError, zipfile.BadZipFile),
     ["truncated.keras"]),
    (".keras file", "Lambda layer", "marshalled lambda code",
     _keras_lambda_code, ValueError, ["safe_mode", "Lambda"]),
    (".keras file", "config module", "tests.reliability._import_sentinel",
     _keras_foreign_module, (TypeError, ValueError), ["Evil"]),
]

_IDS = [f"{c[0]}-{c[1]}-{c[2]}" for c in CASES]
RESULTS = {}


def _expectations(case):
    component, argument, value, fn = case[:4]
    exc = case[4] if len(case) > 4 else ValueError
    must = case[5] if len(case) > 5 else [argument, value]
    return exc, must


@pytest.mark.parametrize("case", CASES, ids=_IDS)
def test_bad_input_is_rejected_clearly(case, tmp_path):
    exc, must = _expectations(case)
    with pytest.raises(exc) as info:
        case[3](str(tmp_path))
    message = str(info.value)
    for part in must:
        assert part in message, (
            f"message does not contain {part!r}: {message}")
    message = message.replace(str(tmp_path), "<tmp>")
    RESULTS[_IDS[CASES.index(case)]] = (
        type(info.value).__name__, message, must)


def _shorten(message, must, head=160, window=160):
    """The start of a long message, and the part naming `must[0]`."""
    if len(message) <= head + window:
        return message
    start = message[:head]
    at = message.find(must[0])
    if at < head - len(must[0]):
        return start + " ..."
    lo = max(head, at - window // 2)
    return f"{start} ... {message[lo:lo + window]} ..."


def test_census_counts_and_writes_table():
    assert len(CASES) >= 40
    assert len(set(_IDS)) == len(_IDS), "duplicate cases"
    components = {c[0].split(" ")[0].split(".")[0] for c in CASES}
    assert len(components) >= 10, components
    if not os.environ.get("KR_WRITE_BAD_INPUTS"):
        return
    assert len(RESULTS) == len(CASES), "run the whole file to write it"
    lines = [
        "# Bad inputs rejected by keras_research",
        "",
        "Generated by `KR_WRITE_BAD_INPUTS=1 python -m pytest "
        "tests/reliability/test_bad_inputs.py`: each row is a test that "
        "passes the bad value and checks that the error names the "
        "argument and the value received. "
        f"{len(CASES)} cases.",
        "",
        "| # | component | argument | bad value | error | message |",
        "|---|---|---|---|---|---|",
    ]
    for i, (case, case_id) in enumerate(zip(CASES, _IDS), 1):
        name, message, must = RESULTS[case_id]
        message = _shorten(" ".join(message.split()), must)
        cells = [str(i), case[0], case[1], case[2], name, message]
        cells = [c.replace("|", "\\|") for c in cells]
        cells[2] = f"`{cells[2]}`"
        lines.append("| " + " | ".join(cells) + " |")
    os.makedirs(os.path.dirname(TABLE), exist_ok=True)
    with open(TABLE, "w") as f:
        f.write("\n".join(lines) + "\n")
