"""Scaling efficiency of the example-style model from 1 to 2 workers.

    python benchmarks/multi_worker_scaling.py [--repeats 3] [--steps 40]

Trains the text classifier of `tests/reliability/_models.py`
(RaggedEmbeddingBag(mean) -> FactorizedDense -> Dense, keras_research
Adam, JacobianRegularizer wrt the embedding) with the worker script the
multi-worker tests use (`tests/reliability/_mw_worker.py`):

- 1 worker: one process pinned to CPU core 0, one intra-op thread,
  per-step batch `B`;
- 2 workers: `tf.distribute.MultiWorkerMirroredStrategy` over two
  localhost processes (TF_CONFIG, free ports) pinned to cores 0 and 1, one
  intra-op thread each, global batch `2B` (weak scaling: each worker
  computes `B` examples per step, as the single worker does).

Each run fits `--warmup-steps` steps untimed (tracing, first collective),
then `--steps` timed steps. The two configurations alternate `--repeats`
times; medians of examples/second are reported, and the efficiency
`throughput(2 workers) / (2 * throughput(1 worker))`. Nothing is asserted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.reliability import _cluster  # noqa: E402


def _args(steps, warmup, batch, cpu):
    return ["--model", "text", "--steps", str(steps), "--warmup-steps",
            str(warmup), "--batch-size", str(batch), "--threads", "1",
            "--cpu", str(cpu), "--deadline", "590"]


def one_worker(steps, warmup, batch, tmp):
    log = os.path.join(tmp, "single.log")
    proc = _cluster.start(_args(steps, warmup, batch, 0),
                          _cluster.single_env(), log)
    (code,), _, timed_out = _cluster.wait_all([proc], 600)
    text = open(log).read()
    if code != 0 or timed_out:
        raise RuntimeError(f"single worker failed:\n{text[-3000:]}")
    return _cluster.result_line(text)["examples_per_s"]


def two_workers(steps, warmup, batch, tmp):
    codes, logs, _, timed_out = _cluster.run_cluster(
        2, [], tmp, timeout=600,
        per_worker=[_args(steps, warmup, 2 * batch, i) for i in (0, 1)],
    )
    if codes != [0, 0] or timed_out:
        raise RuntimeError("workers failed:\n" + "\n".join(
            log[-3000:] for log in logs))
    # Both workers report the global examples/second; take the slower.
    return min(_cluster.result_line(log)["examples_per_s"] for log in logs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64,
                        help="examples per worker per step")
    args = parser.parse_args()
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0))
    print(f"TF {tf.__version__}; {cores} CPU cores visible; "
          f"config {vars(args)}; no GPU in this run")
    load = os.getloadavg()
    print(f"load average at start: {load}")
    single, double = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            single.append(one_worker(args.steps, args.warmup_steps,
                                     args.batch_size, tmp))
            double.append(two_workers(args.steps, args.warmup_steps,
                                      args.batch_size, tmp))
            print(f"repeat {r}: 1 worker {single[-1]:.1f} ex/s, "
                  f"2 workers {double[-1]:.1f} ex/s", flush=True)
    s, d = statistics.median(single), statistics.median(double)
    result = {
        "one_worker_examples_per_s": s,
        "two_workers_examples_per_s": d,
        "speedup": d / s,
        "efficiency": d / (2 * s),
        "single_runs": single,
        "double_runs": double,
        "load_average_end": os.getloadavg(),
    }
    print(json.dumps(result))
    print(f"median: 1 worker {s:.1f} ex/s, 2 workers {d:.1f} ex/s, "
          f"speedup {d / s:.2f}x, efficiency {d / (2 * s):.0%}")


if __name__ == "__main__":
    main()
