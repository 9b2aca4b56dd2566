"""Loads saved models in a process that never built them.

Run by `conftest.py` as `python _reload_worker.py`. It imports keras,
keras_research and the keras-io scripts' own layers (`_keras_io_layers.py`,
loaded from its file), nothing of the tests. Each line on stdin is a JSON
request `{"model": path, "inputs": npz path, "outputs": npz path}`; the
model is loaded with `safe_mode=True` and no `custom_objects`, called on
the inputs (`values`/`row_splits` make a `tf.RaggedTensor`), and the
outputs are written. Each answer is one JSON line: `{"ok": true}` or
`{"error": "..."}`.
"""

import importlib.util
import json
import os
import pathlib
import sys
import traceback

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_research  # noqa: E402, F401

_spec = importlib.util.spec_from_file_location(
    "keras_io_layers", pathlib.Path(__file__).with_name("_keras_io_layers.py")
)
_spec.loader.exec_module(importlib.util.module_from_spec(_spec))


def _inputs(path):
    with np.load(path) as data:
        if "row_splits" in data:
            return tf.RaggedTensor.from_row_splits(
                data["values"], data["row_splits"]
            )
        return data["x"]


def _serve(request):
    model = keras.saving.load_model(request["model"], safe_mode=True)
    outputs = model(_inputs(request["inputs"]), training=False)
    np.savez(request["outputs"], y=keras.ops.convert_to_numpy(outputs))


def main():
    assert not any(name.startswith("tests") for name in sys.modules)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            _serve(json.loads(line))
            answer = {"ok": True}
        except Exception:  # reported to the test, which fails with it
            answer = {"error": traceback.format_exc()}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
