"""Which weights `factorized_scope` and `factorize` factorize, and why.

One policy for both tools. A weight is a candidate when it is a trainable,
floating-point, unconstrained weight with at least two dimensions; its
matrix view is (m, n) = (prod(shape[:-1]), shape[-1]). Without a `filter`
a candidate is factorized at rank r when

- it has at least `min_size` elements (small weights save little),
- its smaller side min(m, n) is at least `min_dim`: thin weights such as
  a 1600 x 10 classifier head or a 2 -> 3136 decoder bottleneck lose much
  and save little at low rank, so they keep full rank,
- and the factors hold fewer numbers than the weight: r (m + n) < m n.

A `filter` replaces the three rules with its own choice. Every decision is
recorded in a `FactorizationReport` with the reason a weight was left at
full rank, and a factorization that factorizes nothing warns with those
reasons.
"""

import math
import warnings

import numpy as np
import tensorflow as tf

from keras_research import _low_rank

DEFAULT_MIN_SIZE = 4096


def default_min_dim(min_size):
    """`min_dim` when not given: half the side of a square `min_size`.

    32 for the default `min_size` of 4096, 0 for `min_size=0`.
    """
    return math.isqrt(min_size) // 2


def validate_min_size(min_size):
    if (
        isinstance(min_size, bool)
        or not isinstance(min_size, (int, np.integer))
        or min_size < 0
    ):
        raise ValueError(
            "`min_size` must be a non-negative integer (the smallest number "
            f"of elements of a weight to factorize). Received: "
            f"min_size={min_size!r}"
        )
    return int(min_size)


def validate_min_dim(min_dim, min_size):
    if min_dim is None:
        return default_min_dim(min_size)
    if (
        isinstance(min_dim, bool)
        or not isinstance(min_dim, (int, np.integer))
        or min_dim < 0
    ):
        raise ValueError(
            "`min_dim` must be None or a non-negative integer (the smallest "
            "smaller side min(m, n) of a weight to factorize). Received: "
            f"min_dim={min_dim!r}"
        )
    return int(min_dim)


def validate_filter(filter):
    if filter is not None and not callable(filter):
        raise ValueError(
            "`filter` must be None or a callable "
            "`filter(layer, name, shape) -> bool`. "
            f"Received: filter={filter!r}"
        )
    return filter


def is_float(dtype):
    try:
        return tf.as_dtype(dtype).is_floating
    except TypeError:
        return False


def excluded(kwargs, dtype):
    """Why `add_weight(**kwargs)` is never factorized, or None."""
    if not kwargs.get("trainable", True):
        return "not trainable"
    if kwargs.get("constraint") is not None:
        return "has a constraint (cannot be imposed on a product)"
    if not is_float(dtype):
        return f"dtype {dtype} is not floating point"
    return None


def is_matrix(shape):
    return (
        shape is not None
        and len(shape) >= 2
        and all(d is not None for d in shape)
    )


def size_reason(shape, min_size, min_dim):
    """Why a weight of `shape` is too small or thin, or None."""
    m, n = _low_rank.matrix_shape(shape)
    if min(m, n) < 2:
        return f"smaller side {min(m, n)}: already rank 1"
    if m * n < min_size:
        return f"{m * n} elements < min_size={min_size}"
    if min(m, n) < min_dim:
        return f"smaller side {min(m, n)} < min_dim={min_dim}"
    return None


def savings_reason(rank, shape):
    """Why rank-`rank` factors of `shape` are not worth it, or None."""
    m, n = _low_rank.matrix_shape(shape)
    if not _low_rank.saves_parameters(rank, m, n):
        return (
            f"rank {rank} saves nothing: r*(m+n) = {rank * (m + n)} >= "
            f"m*n = {m * n}"
        )
    return None


def choose_rank(rank, shape, min_size, min_dim, filter, layer, name):
    """`(rank, None)` to factorize a weight, or `(None, reason)`."""
    shape = tuple(int(d) for d in shape)
    m, n = _low_rank.matrix_shape(shape)
    full_rank = min(m, n)
    r = min(_low_rank.resolve_rank(rank, full_rank), full_rank)
    if filter is not None:
        if full_rank < 2:
            return None, f"smaller side {full_rank}: already rank 1"
        if filter(layer, name, shape):
            return r, None
        return None, "rejected by filter"
    reason = size_reason(shape, min_size, min_dim) or savings_reason(
        r, shape
    )
    return (None, reason) if reason else (r, None)


class FactorizationReport:
    """What a factorization did: each factorized weight, and why not others.

    Iterating over the report (or indexing it) gives the factorized
    weights, each a dict with keys `layer` (layer name, or None for a raw
    `tf.Variable`), `weight` (weight name), `path`, `shape`,
    `matrix_shape` ((m, n)), `rank`, `full_rank`, `params_before`
    (m * n), `params_after` (r * (m + n)) and `relative_error`
    (`||W - left @ right||_F / ||W||_F` for `factorize`; None for
    `factorized_scope`, whose weights start from a random sample).
    `skipped` lists the matrix-shaped weights left at full rank, each a
    dict with `path`, `shape` and `reason`. `summary()` is one line;
    `print(report)` shows the table.

    Attributes:
        entries: list of dicts, in the order the weights were created.
        skipped: list of dicts, in the order the weights were created.
        model_params_before: int or None, parameters before.
        model_params_after: int or None, parameters after.
    """

    def __init__(
        self,
        entries=(),
        model_params_before=None,
        model_params_after=None,
        skipped=(),
    ):
        self.entries = list(entries)
        self.skipped = list(skipped)
        self.model_params_before = model_params_before
        self.model_params_after = model_params_after

    def add(self, path, shape, rank, layer=None, weight=None, error=None):
        m, n = _low_rank.matrix_shape(shape)
        self.entries.append(
            {
                "layer": layer,
                "weight": weight,
                "path": path,
                "shape": tuple(shape),
                "matrix_shape": (m, n),
                "rank": int(rank),
                "full_rank": int(min(m, n)),
                "params_before": int(m * n),
                "params_after": int(rank * (m + n)),
                "relative_error": error,
            }
        )

    def skip(self, path, shape, reason):
        self.skipped.append(
            {"path": path, "shape": tuple(shape), "reason": reason}
        )

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        return self.entries[index]

    def summary(self):
        """One line: what was factorized and what kept full rank, why."""
        before = sum(e["params_before"] for e in self.entries)
        after = sum(e["params_after"] for e in self.entries)
        total = len(self.entries) + len(self.skipped)
        line = f"factorized {len(self.entries)} of {total} matrix weights"
        if self.entries:
            line += f" ({before} -> {after} parameters)"
        if self.skipped:
            reasons = {}
            for entry in self.skipped:
                key = _reason_kind(entry["reason"])
                reasons.setdefault(key, []).append(entry)
            parts = []
            for kind, group in reasons.items():
                example = group[0]
                parts.append(
                    f"{len(group)} {kind} (e.g. {example['path']} "
                    f"{example['shape']}: {example['reason']})"
                )
            line += "; kept full rank: " + ", ".join(parts)
        return line

    def __str__(self):
        header = (
            f"{'weight':<40} {'shape':<18} {'rank':>5} {'before':>10} "
            f"{'after':>10} {'rel. error':>10}"
        )
        lines = [header, "-" * len(header)]
        for e in self.entries:
            error = e["relative_error"]
            error = "-" if error is None else f"{error:.4g}"
            lines.append(
                f"{e['path']:<40} {str(e['shape']):<18} {e['rank']:>5} "
                f"{e['params_before']:>10} {e['params_after']:>10} "
                f"{error:>10}"
            )
        for e in self.skipped:
            lines.append(
                f"{e['path']:<40} {str(e['shape']):<18} "
                f"full rank: {e['reason']}"
            )
        if self.model_params_before is not None:
            lines.append(
                f"model parameters: {self.model_params_before} -> "
                f"{self.model_params_after}"
            )
        lines.append(self.summary())
        return "\n".join(lines)

    __repr__ = __str__

    def warn_if_empty(self, tool, stacklevel=3):
        """Warns, saying why, when nothing was factorized."""
        if self.entries:
            return
        if not self.skipped:
            why = (
                "no matrix-shaped weight was created inside it (layers "
                "create their weights when first called or built: build "
                "the model inside the scope)"
                if tool == "factorized_scope"
                else "the model has no matrix-shaped weight"
            )
        else:
            why = (
                f"{self.summary()}. Lower `min_size` / `min_dim`, or pass "
                "`filter=` to choose weights yourself"
            )
        warnings.warn(
            f"{tool} factorized no weight: {why}.", stacklevel=stacklevel
        )


def _reason_kind(reason):
    for marker, kind in (
        ("min_dim", "thin (smaller side < min_dim)"),
        ("min_size", "small (< min_size elements)"),
        ("saves nothing", "not compressible at that rank"),
        ("filter", "rejected by filter"),
        ("rank 1", "already rank 1"),
    ):
        if marker in reason:
            return kind
    return reason
