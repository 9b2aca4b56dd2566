"""`factorized_scope`: build any Keras layer with low-rank weights."""

import numpy as np
import tensorflow as tf

from keras_research.scopes import _add_weight_hook, _factorized_layer
from keras_research.scopes import weight_creator_scope as _wcs
from keras_research.scopes._factorized_weight import (
    FactorizedVariable,
    matrix_shape,
    resolve_rank,
    spectral_factors,
    validate_rank,
)

DEFAULT_MIN_SIZE = 4096


def _validate_min_size(min_size):
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


def _validate_filter(filter):
    if filter is not None and not callable(filter):
        raise ValueError(
            "`filter` must be None or a callable "
            "`filter(layer, name, shape) -> bool`. "
            f"Received: filter={filter!r}"
        )
    return filter


def choose_rank(rank, shape, min_size, filter, layer, name):
    """The rank to factorize a weight at, or None to leave it full.

    A weight qualifies if it has at least two dimensions and its matrix
    view (prod(shape[:-1]) x shape[-1]) has full rank > 1. Without a
    `filter`, it must also have at least `min_size` elements and the
    factors must hold fewer parameters than the weight. With a `filter`,
    the filter alone decides, and the rank is capped at the full rank.
    """
    if shape is None or len(shape) < 2 or any(d is None for d in shape):
        return None
    m, n = matrix_shape(shape)
    full_rank = min(m, n)
    if full_rank < 2:
        return None
    r = min(resolve_rank(rank, full_rank), full_rank)
    if filter is not None:
        return r if filter(layer, name, tuple(shape)) else None
    if m * n < min_size or r * (m + n) >= m * n:
        return None
    return r


class factorized_scope:
    """Creates the matrix-shaped weights of any layer as two low-rank factors.

    Inside this scope, every weight that a Keras layer creates (with
    `add_weight`, i.e. every weight of every Keras layer, KerasHub model or
    custom layer) and that qualifies is created as a factorized weight: two
    trainable variables `{name}_left` (m x r) and `{name}_right` (r x n),
    where (m, n) = (prod(shape[:-1]), shape[-1]) is the weight's matrix
    view (a `Conv2D` kernel is (kh * kw * cin) x cout, an `Embedding`
    table vocabulary x dim as in ALBERT). The layer receives an object
    that converts to `reshape(left @ right, shape)`, so its code runs
    unchanged and trains the factors; `Dense`, `Embedding`, `Conv2D` and
    `Conv3D` never build the full kernel (they compute `(x @ left) @ right`,
    `take(left, ids) @ right` and `conv(x, left) @ right`). Other
    weights (biases, normalization scales, small, non-matrix or
    non-trainable ones, and weights with a `constraint`, which cannot be
    imposed on a product) are created normally.

    A weight qualifies when its factors hold fewer parameters than it
    (r * (m + n) < m * n) and it has at least `min_size` elements; a
    `filter` replaces both tests with its own choice.

    The factors start as the truncated SVD of a sample of the layer's own
    initializer ("spectral initialization", Khodak et al., 2021), so the
    layer starts from the best rank-r approximation of the weight it would
    have had. A weight's regularizer is applied to the product.

    Like `tf.variable_creator_scope` in TF 2 code, the scope also
    factorizes raw `tf.Variable`s created by `tf.Module` code inside it
    (when given a concrete initial value of rank >= 2): `tf.Variable(...)`
    then returns a `tf.Module` holding the two factors, which converts to
    a tensor; its factors start as the truncated SVD of the initial value.

    Only weights created inside the scope are affected: build the model
    (call it once, or use `keras.Input`) inside it.

    Saving: models save and load with `model.save` /
    `keras.saving.load_model(path, safe_mode=True)` with no
    `custom_objects` (a factorized layer serializes as
    `keras_research>FactorizedLayer`, recording the original layer and the
    rank of each factorized weight), `save_weights` / `load_weights`,
    `tf.train.Checkpoint` and `keras.callbacks.BackupAndRestore`; the
    factors come back bit-exactly. Loading a full-rank weights file
    (`load_weights` of the unfactorized model's `.weights.h5`) into a
    factorized model is supported: each factorized weight takes the
    truncated SVD of the stored kernel, with a warning that states the
    relative reconstruction error. Models that re-create their layers from
    hyperparameters in `__init__` (KerasHub backbones, subclassed models)
    do not record the factorization in their config: load their `.keras`
    file inside the same `factorized_scope`.

    Args:
        rank: int >= 1, the rank of every factorized weight, or float in
            (0, 1], a fraction of each weight's full rank min(m, n)
            (rounded, at least 1).
        min_size: int. Weights with fewer elements are left alone.
            Defaults to `4096`. Ignored when `filter` is given.
        filter: optional callable `filter(layer, name, shape) -> bool`
            choosing the weights to factorize (weights that are not
            matrix-shaped, not trainable, not floating point or
            constrained are never factorized). The rank is capped at
            min(m, n). For raw `tf.Variable`s, `layer` is `None`.

    Raises:
        ValueError: on a `rank` that is not an int >= 1 or a float in
            (0, 1], a negative `min_size`, or a `filter` that is not
            callable.

    Example:

    >>> import keras
    >>> import keras_research
    >>> with keras_research.factorized_scope(rank=8):
    ...     inputs = keras.Input((64,))
    ...     outputs = keras.layers.Dense(128)(inputs)
    ...     model = keras.Model(inputs, outputs)
    >>> [tuple(w.shape) for w in model.weights]
    [(64, 8), (8, 128), (128,)]

    References:
        - [Khodak et al., 2021. Initialization and Regularization of
          Factorized Neural Layers](https://arxiv.org/abs/2105.01029)
        - [Lan et al., 2019. ALBERT](https://arxiv.org/abs/1909.11942)
    """

    def __init__(self, rank, *, min_size=DEFAULT_MIN_SIZE, filter=None):
        self.rank = validate_rank(rank)
        self.min_size = _validate_min_size(min_size)
        self.filter = _validate_filter(filter)
        self._scopes = []

    def _keras_creator(self, next_creator, **kwargs):
        layer = kwargs["layer"]
        dtype = kwargs.get("dtype") or layer.variable_dtype
        if (
            _factorized_layer.creating_factors()
            or getattr(layer, "_kr_skip_factorization", False)
            or not kwargs.get("trainable", True)
            or kwargs.get("constraint") is not None
            or not _is_float(dtype)
        ):
            return next_creator(**kwargs)
        name = kwargs.get("name") or "variable"
        shape = kwargs.get("shape")
        rank = choose_rank(
            self.rank,
            None if shape is None else tuple(shape),
            self.min_size,
            self.filter,
            layer,
            name,
        )
        if rank is None:
            return next_creator(**kwargs)
        chain = _factorized_layer.creation_chain(layer)
        root = _factorized_layer.record_root(chain)
        key = _factorized_layer.relative_key(chain, root, name)
        return _factorized_layer.make_factorized(
            next_creator, kwargs, rank, root, key
        )

    def _tf_creator(self, next_creator, **kwargs):
        initial_value = kwargs.get("initial_value")
        if (
            _wcs.in_add_weight()
            or _add_weight_hook.in_keras_variable_init()
            or callable(initial_value)
            or initial_value is None
            or isinstance(initial_value, tf.Variable)
            or kwargs.get("trainable") is False
        ):
            # Keras's own variables (inside `add_weight`, a `keras.Variable`
            # or with a callable initial value) and anything unusual pass
            # through.
            return next_creator(**kwargs)
        value = tf.convert_to_tensor(initial_value, dtype=kwargs.get("dtype"))
        shape = tuple(value.shape)
        if not value.dtype.is_floating or None in shape:
            return next_creator(**kwargs)
        name = kwargs.get("name") or "Variable"
        rank = choose_rank(
            self.rank, shape, self.min_size, self.filter, None, name
        )
        if rank is None:
            return next_creator(**kwargs)
        full = value.numpy().reshape(matrix_shape(shape))
        left, right = spectral_factors(full, rank)
        common = {
            k: v
            for k, v in kwargs.items()
            if k not in ("initial_value", "shape", "name", "dtype")
        }
        left = next_creator(
            initial_value=tf.constant(left, value.dtype),
            name=f"{name}_left",
            **common,
        )
        right = next_creator(
            initial_value=tf.constant(right, value.dtype),
            name=f"{name}_right",
            **common,
        )
        return FactorizedVariable(left, right, shape, name=name)

    def __enter__(self):
        keras_scope = _wcs.weight_creator_scope(self._keras_creator)
        tf_scope = tf.variable_creator_scope(self._tf_creator)
        keras_scope.__enter__()
        try:
            tf_scope.__enter__()
        except BaseException:
            keras_scope.__exit__(None, None, None)
            raise
        self._scopes.append((keras_scope, tf_scope))
        return self

    def __exit__(self, *exc_info):
        keras_scope, tf_scope = self._scopes.pop()
        try:
            tf_scope.__exit__(*exc_info)
        finally:
            keras_scope.__exit__(*exc_info)
        return False


def _is_float(dtype):
    try:
        return tf.as_dtype(dtype).is_floating
    except TypeError:
        return False
