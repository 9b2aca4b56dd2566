"""`factorized_scope`: build any Keras layer with low-rank weights."""

import tensorflow as tf

from keras_research import _low_rank
from keras_research.scopes import _add_weight_hook, _factorized_layer
from keras_research.scopes import _selection as sel
from keras_research.scopes import weight_creator_scope as _wcs
from keras_research.scopes._factorized_weight import FactorizedVariable

DEFAULT_MIN_SIZE = sel.DEFAULT_MIN_SIZE


def choose_rank(rank, shape, min_size, filter, layer, name, min_dim=None):
    """The rank to factorize a weight at, or None to leave it full.

    The scope's default policy (see `_selection.py`) for a weight of
    `shape`; `min_dim=None` derives it from `min_size` as the scope does.
    """
    if not sel.is_matrix(shape):
        return None
    min_dim = sel.validate_min_dim(min_dim, min_size)
    rank, _ = sel.choose_rank(
        rank, shape, min_size, min_dim, filter, layer, name
    )
    return rank


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

    Which weights: a weight qualifies when it has at least `min_size`
    elements, its smaller side min(m, n) is at least `min_dim` (thin
    weights, such as a 1600 x 10 classifier head or a 2 -> 3136 decoder
    bottleneck, keep full rank: at low rank they lose much and save
    little), and its factors hold fewer parameters than it
    (r * (m + n) < m * n). A `filter` replaces these tests with its own
    choice. `scope.report` (a `FactorizationReport`) lists each weight
    factorized and why each other matrix weight kept full rank;
    `scope.report.summary()` says it in one line. A scope that factorizes
    nothing warns and says why.

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
    relative reconstruction error. Custom layers and subclassed models
    that create their sublayers in `__init__` record the factorization
    too (an auto-named sublayer by the attribute that holds it) and load
    with no scope. Models that build their whole functional graph in
    `__init__` from hyperparameters (KerasHub backbones) do not record it
    in their config: load their `.keras` file inside the same
    `factorized_scope`.

    Args:
        rank: int >= 1, the rank of every factorized weight, or float in
            (0, 1], a fraction of each weight's full rank min(m, n)
            (rounded, at least 1).
        min_size: int. Weights with fewer elements are left alone.
            Defaults to `4096`. Ignored when `filter` is given.
        min_dim: int. Weights whose matrix view has a smaller side below
            it keep full rank. Defaults to `None`: `isqrt(min_size) // 2`,
            i.e. 32 with the default `min_size`, 0 with `min_size=0`.
            Ignored when `filter` is given.
        filter: optional callable `filter(layer, name, shape) -> bool`
            choosing the weights to factorize (weights that are not
            matrix-shaped, not trainable, not floating point or
            constrained are never factorized). The rank is capped at
            min(m, n). For raw `tf.Variable`s, `layer` is `None`.

    Raises:
        ValueError: on a `rank` that is not an int >= 1 or a float in
            (0, 1], a negative `min_size` or `min_dim`, or a `filter` that
            is not callable.

    Example:

    >>> import keras
    >>> import keras_research
    >>> with keras_research.factorized_scope(rank=8) as scope:
    ...     inputs = keras.Input((64,))
    ...     outputs = keras.layers.Dense(128)(inputs)
    ...     model = keras.Model(inputs, outputs)
    >>> [tuple(w.shape) for w in model.weights]
    [(64, 8), (8, 128), (128,)]
    >>> scope.report.summary()
    'factorized 1 of 1 matrix weights (8192 -> 1536 parameters)'

    References:
        - [Khodak et al., 2021. Initialization and Regularization of
          Factorized Neural Layers](https://arxiv.org/abs/2105.01029)
        - [Lan et al., 2019. ALBERT](https://arxiv.org/abs/1909.11942)
    """

    def __init__(
        self, rank, *, min_size=DEFAULT_MIN_SIZE, min_dim=None, filter=None
    ):
        self.rank = _low_rank.validate_rank(rank)
        self.min_size = sel.validate_min_size(min_size)
        self.min_dim = sel.validate_min_dim(min_dim, self.min_size)
        self.filter = sel.validate_filter(filter)
        self.report = sel.FactorizationReport()
        self._scopes = []

    def _decide(self, shape, layer, name, path):
        """The rank for a candidate weight, recorded in the report."""
        rank, reason = sel.choose_rank(
            self.rank, shape, self.min_size, self.min_dim, self.filter,
            layer, name,
        )
        if rank is None:
            self.report.skip(path, shape, reason)
        else:
            self.report.add(
                path, shape, rank,
                layer=None if layer is None else layer.name, weight=name,
            )
        return rank

    def _keras_creator(self, next_creator, **kwargs):
        layer = kwargs["layer"]
        shape = kwargs.get("shape")
        if _factorized_layer.creating_factors() or not sel.is_matrix(shape):
            return next_creator(**kwargs)
        name = kwargs.get("name") or "variable"
        shape = tuple(int(d) for d in shape)
        path = _add_weight_hook.variable_path(layer, name)
        if getattr(layer, "_kr_skip_factorization", False):
            self.report.skip(
                path, shape, f"{type(layer).__name__} is already factorized"
            )
            return next_creator(**kwargs)
        dtype = kwargs.get("dtype") or layer.variable_dtype
        reason = sel.excluded(kwargs, dtype)
        if reason:
            self.report.skip(path, shape, reason)
            return next_creator(**kwargs)
        rank = self._decide(shape, layer, name, path)
        if rank is None:
            return next_creator(**kwargs)
        return _factorized_layer.make_factorized(next_creator, kwargs, rank)

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
        if not value.dtype.is_floating or not sel.is_matrix(shape):
            return next_creator(**kwargs)
        name = kwargs.get("name") or "Variable"
        rank = self._decide(shape, None, name, name)
        if rank is None:
            return next_creator(**kwargs)
        full = value.numpy().reshape(_low_rank.matrix_shape(shape))
        left, right = _low_rank.spectral_factors(full, rank)
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
        if not self._scopes:
            self.report = sel.FactorizationReport()
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
        if not self._scopes and exc_info[0] is None:
            self.report.warn_if_empty("factorized_scope")
        return False
