"""A fresh process that reloads the integration tests' saved models.

One worker process (`_reload_worker.py`) serves the whole integration run,
so that TensorFlow is imported once more rather than once per model. It
never builds a model: every model it loads comes from a `.keras` file, with
`safe_mode=True`, no `custom_objects`, and only keras, keras_research and
the scripts' own layers imported.
"""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

_WORKER = pathlib.Path(__file__).with_name("_reload_worker.py")
_TIMEOUT = 600  # seconds; the worker answers in ~1 s on a quiet machine


class _Reloader:
    def __init__(self):
        env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        self._process = subprocess.Popen(
            [sys.executable, str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self._answer() == {"ready": True}

    def _answer(self):
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(
                "The reload worker exited with code "
                f"{self._process.wait(_TIMEOUT)}"
            )
        return json.loads(line)

    def outputs(self, path, x, tmp_path):
        """Loads `path` in the worker and returns its outputs on `x`."""
        inputs = tmp_path / f"{pathlib.Path(path).stem}_in.npz"
        outputs = tmp_path / f"{pathlib.Path(path).stem}_out.npz"
        if isinstance(x, tf.RaggedTensor):
            np.savez(inputs, values=x.values, row_splits=x.row_splits)
        else:
            np.savez(inputs, x=x)
        request = {
            "model": str(path),
            "inputs": str(inputs),
            "outputs": str(outputs),
        }
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            pytest.fail(f"Reloading {path} failed:\n{answer['error']}")
        with np.load(outputs) as data:
            return data["y"]

    def close(self):
        self._process.stdin.close()
        self._process.wait(_TIMEOUT)


@pytest.fixture(scope="session")
def _reloader():
    reloader = _Reloader()
    yield reloader
    reloader.close()


@pytest.fixture
def save_and_reload(_reloader, tmp_path):
    """Saves `model`, reloads it in the fresh process, compares outputs.

    Returns the reloaded model's outputs on `x`.
    """

    def check(model, x, name="model"):
        path = tmp_path / f"{name}.keras"
        model.save(path)
        expected = keras.ops.convert_to_numpy(model(x, training=False))
        got = _reloader.outputs(path, x, tmp_path)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        return got

    return check
