"""The factorization math of keras_research, in one private module.

Everything that turns a weight into two factors, or computes with them,
lives here: the rank argument (`validate_rank`, `resolve_rank`,
`energy_rank`), the truncated SVD (`svd`, `split_factors`,
`relative_error`), the spectral initialization (`spectral_factors`) and
the factorized `Dense` computation (`low_rank_dense`).

`keras_research.layers.FactorizedDense`, `keras_research.factorized_scope`
and `keras_research.factorize` all use it; it imports nothing from the
package, so imports point one way: public modules -> this module.
"""

import math
import numbers

import numpy as np
from keras import ops

# Above this size `spectral_factors` uses a randomized SVD: an exact one of
# a 4096 x 4096 initial kernel would take tens of seconds on a CPU.
_EXACT_SVD_MAX_DIM = 512


def validate_rank(rank, argument="rank"):
    """Raises unless `rank` is an int >= 1 or a float in (0, 1]."""
    if isinstance(rank, bool) or not isinstance(
        rank, (numbers.Integral, numbers.Real)
    ):
        raise ValueError(
            f"`{argument}` must be a positive integer or a float in (0, 1] "
            f"(a fraction of the full rank). Received: {argument}={rank!r}"
        )
    if isinstance(rank, numbers.Integral):
        if rank < 1:
            raise ValueError(
                f"`{argument}` must be a positive integer or a float in "
                f"(0, 1] (a fraction of the full rank). "
                f"Received: {argument}={rank}"
            )
        return int(rank)
    rank = float(rank)
    if not (0.0 < rank <= 1.0) or math.isnan(rank):
        raise ValueError(
            f"A float `{argument}` is a fraction of the full rank and must "
            f"be in (0, 1]. Use an int for an absolute rank. "
            f"Received: {argument}={rank}"
        )
    return rank


def resolve_rank(rank, full_rank):
    """The absolute rank for `rank` (int, or fraction of `full_rank`)."""
    if isinstance(rank, float):
        # Round half up: 0.25 of a full rank of 10 is 3.
        return max(1, int(math.floor(rank * full_rank + 0.5)))
    return int(rank)


def matrix_shape(shape):
    """The matrix view (prod(shape[:-1]), shape[-1]) of a weight shape."""
    shape = tuple(int(d) for d in shape)
    return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1]


def saves_parameters(rank, m, n):
    """Whether rank-`rank` factors of an m x n matrix hold fewer numbers."""
    return rank * (m + n) < m * n


def svd(matrix):
    """Exact thin SVD in float64: `(u, s, vt)`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.linalg.svd(matrix, full_matrices=False)


def split_factors(u, s, vt, rank):
    """Best rank-`rank` factors, singular values split evenly.

    Returns `(left, right)` with `left = u_r sqrt(s_r)` and
    `right = sqrt(s_r) vt_r`, so `left @ right` is the truncated SVD.
    """
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def truncated_factors(matrix, rank):
    """`(left, right, relative_error)` of the best rank-`rank` factors."""
    u, s, vt = svd(matrix)
    left, right = split_factors(u, s, vt, rank)
    return left, right, relative_error(s, rank)


def relative_error(s, rank):
    """||W - W_r||_F / ||W||_F from the singular values `s` of W."""
    total = float(np.sum(np.square(s)))
    if total == 0.0:
        return 0.0
    return math.sqrt(float(np.sum(np.square(s[rank:]))) / total)


def energy_rank(s, energy):
    """Smallest r with sum(s[:r]^2) >= energy * sum(s^2) (at least 1)."""
    squares = np.square(np.asarray(s, dtype=np.float64))
    total = squares.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(squares) / total
    # Tolerate float64 round-off at energy = 1.
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(s)))


def _top_svd(matrix, rank):
    """Top-`rank` SVD; randomized (Halko et al. 2011) for big matrices."""
    m, n = matrix.shape
    k = min(m, n)
    if k <= _EXACT_SVD_MAX_DIM or 2 * (rank + 16) >= k:
        u, s, vt = svd(matrix)
        return u[:, :rank], s[:rank], vt[:rank]
    rng = np.random.default_rng(0)
    y = matrix @ rng.standard_normal((n, rank + 16))
    for _ in range(2):  # Power iterations sharpen the spectrum.
        y, _ = np.linalg.qr(y)
        y = matrix @ (matrix.T @ y)
    q, _ = np.linalg.qr(y)
    ub, s, vt = np.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ ub)[:, :rank], s[:rank], vt[:rank]


def spectral_factors(full, rank):
    """Factors of the best rank-`rank` approximation of `full` (m x n).

    This is the "spectral initialization" of factorized layers (Khodak et
    al., 2021, https://arxiv.org/abs/2105.01029): the factors start as the
    truncated SVD of the weight the layer would have had. An all-zero
    `full` (e.g. a zeros initializer) gives a random `left` and a zero
    `right`, so the product starts at zero but still receives gradients.
    """
    full = np.asarray(full, dtype=np.float64)
    m, n = full.shape
    if not np.any(full):
        limit = math.sqrt(3.0 / m)
        left = np.random.default_rng(0).uniform(-limit, limit, (m, rank))
        return left, np.zeros((rank, n))
    u, s, vt = _top_svd(full, rank)
    return split_factors(u, s, vt, rank)


def low_rank_dense(inputs, left, right, bias=None, activation=None):
    """`activation((inputs @ left) @ right + bias)`: the factorized Dense.

    The one implementation of a Dense layer with a factorized kernel,
    shared by `FactorizedDense.call` and the `Dense` layers that
    `factorized_scope` builds. The kernel `left @ right` is never formed.
    """
    x = ops.matmul(ops.matmul(inputs, left), right)
    if bias is not None:
        x = ops.add(x, bias)
    if activation is not None:
        x = activation(x)
    return x
