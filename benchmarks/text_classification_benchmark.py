"""End-to-end IMDB timing of the text-classification example vs fastText.

    python benchmarks/text_classification_benchmark.py \
        --data-dir ../shared/tfds --repeats 3 \
        --fasttext-python /path/to/venv-with-fasttext/bin/python \
        --baseline-example /path/to/an/older/text_classification.py

Runs `examples/text_classification.py` with its default settings (whole
runs: preprocessing, training, test, export), an older copy of the example
when one is given (e.g. `git show <rev>:examples/text_classification.py`,
run against this checkout's package) and, when a Python with the
`fasttext` package is given, fastText's supervised classifier with the
reference settings of the issue (`wordNgrams=2`, `dim=10`, `epoch=10`,
`lr=0.2`, `thread=2`) on the same IMDB train/test texts, standardized by
`keras_research.layers.StandardizeText` as in the example. Each
repetition runs the candidates in a rotated order in separate processes,
so that load from other jobs on a shared machine falls on all of them.
It reports per-run wall time, CPU time (user + system, of the child
process), test accuracy and the examples' peak memory, the medians, and the
ratios of the example's whole-run wall time to the older example's and to
fastText's training time. About 1 minute per run on 2 quiet cores.
Nothing is asserted.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "text_classification.py"

FASTTEXT_RUN = """
import json, sys, time, fasttext
train, test = sys.argv[1], sys.argv[2]
start = time.perf_counter()
model = fasttext.train_supervised(
    train, wordNgrams=2, dim=10, epoch=10, lr=0.2, thread=2, verbose=0
)
trained = time.perf_counter()
n, precision, _ = model.test(test)
print(json.dumps({"train_seconds": trained - start,
                  "test_seconds": time.perf_counter() - trained,
                  "test_accuracy": precision}))
"""


def export_fasttext_files(data_dir, out_dir):
    """IMDB train/test as fastText files, standardized like the example."""
    sys.path.insert(0, str(REPO))
    import tensorflow_datasets as tfds

    import keras_research

    standardize = keras_research.layers.StandardizeText()
    paths = {}
    for split in ("train", "test"):
        path = Path(out_dir) / f"imdb_{split}.txt"
        ds = tfds.load(
            "imdb_reviews",
            split=split,
            data_dir=data_dir,
            download=False,
            as_supervised=True,
        )
        with open(path, "w") as f:
            for texts, labels in ds.batch(1000):
                for text, label in zip(
                    standardize(texts).numpy(), labels.numpy()
                ):
                    words = " ".join(text.decode("utf-8").split())
                    f.write(f"__label__{label} {words}\n")
        paths[split] = str(path)
    return paths


def run_child(argv):
    """Runs a child process; returns (stdout, wall s, CPU s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (
        after.ru_stime - before.ru_stime
    )
    return result.stdout, wall, cpu


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "tfds"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--fasttext-python",
        default=None,
        help="A Python interpreter with the fasttext package installed.",
    )
    p.add_argument(
        "--baseline-example",
        default=None,
        help="An older text_classification.py to time against this one.",
    )
    args = p.parse_args()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average at start {' '.join(load)}"
    )
    work = tempfile.mkdtemp(prefix="text_classification_bench_")
    def example_run(script, name):
        return lambda i: [
            sys.executable,
            str(script),
            "--data-dir",
            args.data_dir,
            "--no-download",
            "--verbose",
            "0",
            "--output-dir",
            os.path.join(work, f"{name}{i}"),
        ]

    candidates = {"example (defaults)": example_run(EXAMPLE, "run")}
    if args.baseline_example:
        candidates["older example"] = example_run(
            args.baseline_example, "baseline"
        )
    if args.fasttext_python:
        files = export_fasttext_files(args.data_dir, work)
        script = os.path.join(work, "fasttext_run.py")
        with open(script, "w") as f:
            f.write(FASTTEXT_RUN)
        candidates["fastText"] = lambda i: [
            args.fasttext_python,
            script,
            files["train"],
            files["test"],
        ]
    names = list(candidates)
    runs = {name: [] for name in names}
    for i in range(args.repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            stdout, wall, cpu = run_child(candidates[name](i))
            if name == "fastText":
                record = json.loads(stdout.strip().splitlines()[-1])
            else:
                folder = "run" if name.startswith("example") else "baseline"
                path = os.path.join(work, f"{folder}{i}", "metrics.json")
                with open(path) as f:
                    metrics = json.load(f)
                record = {
                    k: metrics[k]
                    for k in (
                        "test_accuracy",
                        "train_examples_per_second",
                        "wall_time_seconds",
                        "preprocessing_seconds",
                        "training_seconds",
                        "evaluation_seconds",
                        "peak_memory_mb",
                    )
                }
            record.update(process_wall=wall, process_cpu=cpu)
            runs[name].append(record)
            print(f"{name} run {i}: {json.dumps(record)}", flush=True)
    summary = {}
    for name, records in runs.items():
        summary[name] = {
            key: statistics.median(r[key] for r in records)
            for key in records[0]
        }
        print(f"median {name}: {json.dumps(summary[name])}")
    if "older example" in summary:
        ratio = (
            summary["example (defaults)"]["process_wall"]
            / summary["older example"]["process_wall"]
        )
        print(f"example / older example, whole-process wall time: {ratio:.2f}x")
    if "fastText" in summary:
        ratio = (
            summary["example (defaults)"]["process_wall"]
            / summary["fastText"]["train_seconds"]
        )
        print(
            "example whole-run wall time / fastText training time: "
            f"{ratio:.2f}x (goal <= 2x)"
        )


if __name__ == "__main__":
    main()
