"""A tiny shared harness for side-by-side benchmarks.

Usage:

```python
from benchmarks._harness import compare, print_config

print_config({"shape": (4096, 1024), "dtype": "float32"})
results = compare(
    {"tf.function": lambda: f(x), "fused": lambda: g(x)},
    baseline="tf.function",
    warmup=3,
    repeats=20,
)
```

`compare` calls every candidate `warmup` times, then runs `repeats` rounds
in which each candidate runs once, in an order rotated every round
(interleaving spreads machine noise evenly over the candidates). A
candidate's return value is synced with `.numpy()` where it has one, so
asynchronous device work is counted. It prints one line per candidate with
the median, the interquartile range and the ratio of the baseline's median
to this candidate's median (`x faster`, > 1 means faster than baseline), and
returns `{name: median_seconds}`.

Benchmarks never assert timings: they print, and the numbers go into
`benchmarks/RESULTS.md` with the command that produced them.
"""

import os
import platform
import statistics
import time


def _sync(value):
    """Forces completion of (possibly nested) TensorFlow results."""
    if isinstance(value, (list, tuple)):
        for v in value:
            _sync(v)
    elif isinstance(value, dict):
        for v in value.values():
            _sync(v)
    elif hasattr(value, "numpy"):
        value.numpy()


def print_config(extra=None):
    """Prints TF/Keras versions, devices, thread counts and `extra`."""
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = (
        ", ".join(
            tf.config.experimental.get_device_details(g).get(
                "device_name", g.name
            )
            for g in gpus
        )
        if gpus
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    print("# configuration")
    print(f"#   tensorflow {tf.__version__}, keras {keras.__version__}")
    print(f"#   python {platform.python_version()}, device: {device}")
    print(
        f"#   cpu cores {os.cpu_count()}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
        f", inter-op threads "
        f"{tf.config.threading.get_inter_op_parallelism_threads() or 'auto'}"
    )
    for key, value in (extra or {}).items():
        print(f"#   {key}: {value}")


def compare(candidates, *, baseline=None, warmup=3, repeats=20, title=None):
    """Times `candidates` (name -> zero-argument callable) interleaved.

    Args:
        candidates: dict mapping a name to a callable taking no arguments.
        baseline: name of the candidate the ratios are relative to.
            Defaults to the first candidate.
        warmup: number of untimed calls of each candidate first.
        repeats: number of timed rounds; each round runs every candidate
            once, in an order rotated by one every round.
        title: optional heading printed above the table.

    Returns:
        dict mapping each name to its median time in seconds.
    """
    if not candidates:
        raise ValueError("`candidates` must not be empty.")
    names = list(candidates)
    baseline = names[0] if baseline is None else baseline
    if baseline not in candidates:
        raise ValueError(
            f"`baseline` must be one of {names}. Received: baseline={baseline}"
        )
    if repeats < 1 or warmup < 0:
        raise ValueError(
            "`repeats` must be >= 1 and `warmup` >= 0. Received: "
            f"repeats={repeats}, warmup={warmup}"
        )
    for name in names:
        for _ in range(warmup):
            _sync(candidates[name]())
    samples = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            _sync(candidates[name]())
            samples[name].append(time.perf_counter() - start)
    medians = {n: statistics.median(s) for n, s in samples.items()}
    if title:
        print(f"## {title}")
    width = max(len(n) for n in names)
    for name in names:
        s = sorted(samples[name])
        q1, q3 = s[len(s) // 4], s[(3 * len(s)) // 4]
        ratio = medians[baseline] / medians[name]
        print(
            f"{name:<{width}}  median {medians[name] * 1e3:9.3f} ms  "
            f"IQR [{q1 * 1e3:.3f}, {q3 * 1e3:.3f}] ms  "
            f"{ratio:6.2f}x vs {baseline}"
        )
    return medians
