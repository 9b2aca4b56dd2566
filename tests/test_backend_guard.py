"""Importing keras_research with another Keras backend fails clearly."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_other_backend_raises_clear_import_error(backend):
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-c", "import keras_research"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "KERAS_BACKEND=tensorflow" in result.stderr
    assert f"KERAS_BACKEND={backend!r}" in result.stderr


def test_tensorflow_backend_imports():
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    result = subprocess.run(
        [sys.executable, "-c",
         "import keras_research; print(keras_research.__version__)"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0.dev0"
