"""A training run that can be killed and restarted (run as a script).

    python -m tests.reliability._resume_run --backup DIR --out W.npz

Trains the example-style text classifier (RaggedEmbeddingBag ->
FactorizedDense -> Dense, keras_research Adam, JacobianRegularizer) on
fixed synthetic ragged batches for `--epochs` epochs with
`keras.callbacks.BackupAndRestore(DIR)`, deterministic ops and fixed
seeds. Run again with the same command after a SIGKILL, it resumes from
the last backup (the start of the interrupted epoch) and must end with
the weights of an uninterrupted run. Prints `RESUMING AT EPOCH e` when it
finds a backup, `STEP n` after every global step and `DONE` at the end;
writes the final weights (`w0..wN`) and optimizer variables (`o0..oM`)
to `--out`.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--backup", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--steps-per-epoch", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from tests.reliability import _models

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    metadata = os.path.join(args.backup, "training_metadata.json")
    if os.path.exists(metadata):
        with open(metadata) as f:
            epoch = json.load(f)["epoch"]
        print(f"RESUMING AT EPOCH {epoch}", flush=True)

    model, callbacks = _models.text_model()
    batches = _models.ragged_batches(args.steps_per_epoch, args.batch_size,
                                     seed=5)
    model(batches[0][0])  # BackupAndRestore needs a built model.
    steps_per_epoch = args.steps_per_epoch

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            step = self.epoch * steps_per_epoch + batch + 1
            print(f"STEP {step}", flush=True)

    model.fit(
        _models.dataset(batches), epochs=args.epochs, verbose=0,
        callbacks=[
            keras.callbacks.BackupAndRestore(
                args.backup, save_freq="epoch", double_checkpoint=True
            ),
            *callbacks,
            Progress(),
        ],
    )
    arrays = {f"w{i}": w for i, w in enumerate(_models.weights_of(model))}
    arrays.update({
        f"o{i}": keras.ops.convert_to_numpy(v)
        for i, v in enumerate(model.optimizer.variables)
    })
    np.savez(args.out, **arrays)
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
