"""Counts XLA compilations of `fit`'s train step (run as a script).

    python tests/callbacks/_xla_compile_count.py DUMP_DIR METHOD...

Trains a small tanh MLP with `jit_compile=True` and a `JacobianRegularizer`
for 8 steps per method, with XLA dumping every module it compiles into
`DUMP_DIR` (`XLA_FLAGS` must be set before TensorFlow starts, hence the
separate process). Prints one JSON line: for each method, how many times
its train step was compiled.
"""

import json
import os
import sys


def main(dump_dir, methods):
    os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump_dir}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from keras_research.callbacks import JacobianRegularizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.normal(size=(64, 4)).astype("float32")
    counts = {}
    for method in methods:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="tanh"),
                keras.layers.Dense(4),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=True
        )
        before = set(os.listdir(dump_dir)) if os.path.isdir(dump_dir) else set()
        callback = JacobianRegularizer(0.1, method=method, num_projections=3)
        model.fit(
            x, y, batch_size=16, epochs=2, verbose=0, callbacks=[callback]
        )
        new = set(os.listdir(dump_dir)) - before
        # One file per compiled module, e.g. `module_0064.a_inference_one_
        # step_on_data_579__.20.before_optimizations.txt`.
        counts[method] = sum(
            "one_step_on_data" in name
            and name.endswith(".before_optimizations.txt")
            for name in new
        )
    print(json.dumps(counts))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
