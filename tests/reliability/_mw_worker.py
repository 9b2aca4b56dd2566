"""One worker of a localhost multi-worker training run (run as a script).

    TF_CONFIG=... python -m tests.reliability._mw_worker --model text \\
        --out worker0.npz

With `TF_CONFIG` naming a cluster, trains under
`tf.distribute.MultiWorkerMirroredStrategy`: the same global batches as a
single-worker run, each worker feeding its own equal slice of every batch.
Without `TF_CONFIG`, trains the same model on one worker without a strategy
(the reference). Writes the final weights to `--out` (`.npz`, `w0..wN`)
and prints one JSON line with timings.

Failure is bounded: the coordination service gives up registering peers
after `--register-timeout` seconds and declares a silent peer dead after
`--heartbeat-timeout` seconds; a watchdog ends the process with a message
after `--deadline` seconds whatever happens. Exit codes: 0 success, 3 a
TensorFlow error (peer unreachable, lost), 1 the watchdog deadline
("Timeout (h:mm:ss)!" and the stacks on stderr).
"""

import argparse
import faulthandler
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _watchdog(seconds):
    """Ends the process after `seconds`, even inside a blocking C++ call.

    A Python timer thread cannot do this: TensorFlow's cluster start-up
    holds the GIL while it waits for peers. faulthandler's watchdog is a C
    thread: it prints "Timeout (h:mm:ss)!" and every thread's stack, then
    exits with status 1.
    """
    faulthandler.dump_traceback_later(seconds, exit=True)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model", choices=("text", "text-fused", "scope"), default="text"
    )
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--register-timeout", type=float, default=20.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--deadline", type=float, default=240.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin the process to this CPU core")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="steps fitted before the timed fit")
    args = parser.parse_args(argv)
    _watchdog(args.deadline)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, args.threads))

    import keras
    from tensorflow.python.eager import context  # noqa: E402

    import keras_research  # noqa: F401

    keras.config.disable_traceback_filtering()
    from tests.reliability import _models

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    num_workers = len(tf_config.get("cluster", {}).get("worker", [])) or 1
    index = tf_config.get("task", {}).get("index", 0)
    t0 = time.perf_counter()
    if num_workers > 1:
        # Before anything initializes TensorFlow's context: configure the
        # coordination service ourselves (the strategy keeps an existing
        # configuration) so that a missing or dead peer is an error after
        # a bounded time, not an hour-long wait.
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader="/job:worker/replica:0/task:0",
            cluster_register_timeout_in_ms=int(args.register_timeout * 1000),
            heartbeat_timeout_in_ms=int(args.heartbeat_timeout * 1000),
            shutdown_barrier_timeout_in_ms=int(
                args.register_timeout * 1000
            ),
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    batches = _models.ragged_batches(
        args.warmup_steps + args.steps, args.batch_size, seed=args.seed
    )
    warm, timed = batches[: args.warmup_steps], batches[args.warmup_steps:]
    if num_workers > 1:
        with strategy.scope():
            model, callbacks = _models.MODELS[args.model]()

        def make(part):
            def fn(ctx):
                return _models.dataset(
                    part, shard=(ctx.input_pipeline_id, num_workers)
                )
            return strategy.distribute_datasets_from_function(fn)

        data_warm = make(warm) if warm else None
        data_timed = make(timed)
    else:
        model, callbacks = _models.MODELS[args.model]()
        data_warm = _models.dataset(warm) if warm else None
        data_timed = _models.dataset(timed)
    setup_s = time.perf_counter() - t0
    if data_warm is not None:
        model.fit(data_warm, epochs=1, steps_per_epoch=len(warm),
                  callbacks=callbacks, verbose=0)
    started = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch == 0 and print(
            "FIRST STEP DONE", flush=True
        )
    )
    t1 = time.perf_counter()
    history = model.fit(data_timed, epochs=1, steps_per_epoch=len(timed),
                        callbacks=[*callbacks, started], verbose=0)
    fit_s = time.perf_counter() - t1
    if args.out:
        import numpy as np

        weights = _models.weights_of(model)
        np.savez(args.out, **{f"w{i}": w for i, w in enumerate(weights)})
    print(json.dumps({
        "worker": index,
        "num_workers": num_workers,
        "setup_s": setup_s,
        "fit_s": fit_s,
        "steps": len(timed),
        "examples_per_s": len(timed) * args.batch_size / fit_s,
        "loss": [float(v) for v in history.history["loss"]],
    }), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # noqa: BLE001 - reported, then a clear exit code
        import traceback

        traceback.print_exc()
        name = type(e).__name__
        sys.stderr.write(f"WORKER FAILED: {name}: {e}\n")
        sys.stderr.flush()
        os._exit(3)
