"""How a library layer holding factorized weights saves, loads and runs.

When `factorized_scope` (or a replay of a saved factorization) gives a
layer a `FactorizedWeight`, the layer's class is swapped, for that instance
only, to `factorized_class(type(layer))`: a subclass that

- stores its variables the generic way (`left`, `right`, ... one entry per
  variable), where `Dense`, `EinsumDense`, the conv layers and `Embedding`
  would store one merged kernel; so the factors round-trip bit-exactly;
- accepts a full-rank weights file too: each factorized weight takes the
  best rank-r approximation (truncated SVD) of the stored kernel, with a
  warning that states the relative reconstruction error;
- for `Dense`, `Embedding`, `Conv2D` and `Conv3D`, computes
  `(x @ left) @ right`, `take(left, ids) @ right` and
  `conv(x, left) @ right` without materializing the full kernel;
- serializes as `keras_research>FactorizedLayer`: the original class and
  config plus the rank of each factorized weight (keyed by its path below
  this layer), so `keras.saving.load_model(..., safe_mode=True)` rebuilds
  the same factors with no `custom_objects`.

The factorization of a weight is recorded on the outermost layer that was
being built when the weight was created (the layer whose config rebuilds
it: `MultiHeadAttention` for its query kernel), except plain `Sequential`
and functional models, which serialize each of their layers.
"""

import functools
import threading

import keras
import numpy as np
from keras import ops

from keras_research._export import PACKAGE
from keras_research.scopes import _add_weight_hook
from keras_research.scopes._factorized_weight import (
    FactorizedWeight,
    ProductRegularizer,
    SpectralInitializer,
    matrix_shape,
)
from keras_research.scopes.weight_creator_scope import weight_creator_scope

LOADER_NAME = "FactorizedLayer"
_ALLOWED_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")

_classes = {}
_state = threading.local()


def creating_factors():
    """Whether this thread is creating the factors of a weight right now.

    Factorizing creators leave factors alone, so nested scopes never
    factorize a factor again.
    """
    return getattr(_state, "factor_depth", 0) > 0


def creation_chain(layer):
    """Layers being built when `layer` creates a weight, outermost first."""
    chain = _add_weight_hook.building_layers()
    if not chain or chain[-1] is not layer:
        chain.append(layer)
    return chain


def record_root(chain):
    """The layer on which a factorization created in `chain` is recorded."""
    for candidate in chain:
        if not _add_weight_hook.is_layer_container(candidate):
            return candidate
    return chain[-1]


def relative_key(chain, root, name):
    """The path of weight `name` below `root`, or None if not below it."""
    for index, layer in enumerate(chain):
        if layer is root:
            return "/".join([x.name for x in chain[index + 1 :]] + [name])
    return None


def _weight_name(kwargs):
    return kwargs.get("name") or "variable"


def make_factorized(
    next_creator, kwargs, rank, root, key, initial_factors=None
):
    """Creates the factors of one weight through `next_creator`.

    Args:
        next_creator: the weight creator to make each factor with.
        kwargs: the `add_weight` arguments of the weight, with `layer`.
        rank: int, the absolute rank.
        root: the layer on which to record the factorization, or None.
        key: the weight's path below `root`.
        initial_factors: optional `(left, right)` arrays to start from;
            by default the truncated SVD of a sample of the weight's own
            initializer.

    Returns:
        The `FactorizedWeight`.
    """
    layer = kwargs["layer"]
    shape = tuple(int(d) for d in kwargs["shape"])
    m, n = matrix_shape(shape)
    name = _weight_name(kwargs)
    initializer = kwargs.get("initializer")
    if initializer is None:
        initializer = "glorot_uniform"
    spectral = SpectralInitializer(initializer, shape, rank)
    if initial_factors is not None:
        spectral.set_factors(*initial_factors)
    common = dict(kwargs, regularizer=None, constraint=None)
    _state.factor_depth = getattr(_state, "factor_depth", 0) + 1
    try:
        left, right = _create_factors(
            next_creator, common, name, m, n, rank, spectral
        )
    finally:
        _state.factor_depth -= 1
    weight = FactorizedWeight(left, right, shape, name)
    regularizer = keras.regularizers.get(kwargs.get("regularizer"))
    if regularizer is not None:
        left.regularizer = ProductRegularizer(regularizer, weight)
    _adopt(layer)
    owned = layer.__dict__["_kr_factorized"]
    owned_key = name
    suffix = 1
    while owned_key in owned:
        suffix += 1
        owned_key = f"{name}_{suffix}"
    owned[owned_key] = weight
    if root is not None:
        _adopt(root)
        root.__dict__["_kr_record"][key] = int(rank)
    return weight


def _create_factors(next_creator, common, name, m, n, rank, spectral):
    left = next_creator(
        **dict(
            common,
            shape=(m, rank),
            name=f"{name}_left",
            initializer=spectral.factor_initializer(0),
        )
    )
    right = next_creator(
        **dict(
            common,
            shape=(rank, n),
            name=f"{name}_right",
            initializer=spectral.factor_initializer(1),
        )
    )
    return left, right


def _adopt(layer):
    """Swaps `layer` to its factorized class (once) and adds our state."""
    cls = type(layer)
    if not issubclass(cls, FactorizedLayer):
        object.__setattr__(layer, "__class__", factorized_class(cls))
    layer.__dict__.setdefault("_kr_factorized", {})
    layer.__dict__.setdefault("_kr_record", {})


def replay_creator(root, record):
    """A creator that re-factorizes the weights named in `record`."""

    def creator(next_creator, **kwargs):
        if creating_factors():
            return next_creator(**kwargs)
        chain = creation_chain(kwargs["layer"])
        key = relative_key(chain, root, _weight_name(kwargs))
        if key is not None and key in record:
            return make_factorized(
                next_creator, kwargs, record[key], root, key
            )
        return next_creator(**kwargs)

    return creator


def pending_replay_creator(factorized, record):
    """Replays `record` for a root still being deserialized.

    Wrappers such as `TimeDistributed` deserialize (and build) their inner
    layer inside their own `from_config`, before the root exists or opens
    a name scope: keys are then the build chain below the layers that were
    already building when `from_config` started, without the new root
    itself (an instance of `factorized`) if it builds its own weights.
    """
    base = _add_weight_hook.building_layers()

    def creator(next_creator, **kwargs):
        if creating_factors():
            return next_creator(**kwargs)
        chain = creation_chain(kwargs["layer"])
        if chain[: len(base)] != base:
            return next_creator(**kwargs)
        below = chain[len(base) :]
        if below and type(below[0]) is factorized:
            below = below[1:]
        key = "/".join([x.name for x in below] + [_weight_name(kwargs)])
        if key in record:
            # The root records `record` once it exists (in `from_config`).
            return make_factorized(next_creator, kwargs, record[key], None, key)
        return next_creator(**kwargs)

    return creator


def _resolve_class(header):
    """The layer class a `FactorizedLayer` config names, as Keras would."""
    name = header.get("class_name")
    registered = header.get("registered_name")
    module = header.get("module") or ""
    for candidate in (registered, name):
        if candidate:
            obj = keras.saving.get_registered_object(candidate)
            if isinstance(obj, type):
                return obj
    if module.split(".", 1)[0] in _ALLOWED_PACKAGES:
        import importlib

        obj = vars(importlib.import_module(module)).get(name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer):
            return obj
    raise TypeError(
        f"Could not locate the layer class {module}.{name} of a factorized "
        "layer. Make sure custom layer classes are registered with "
        "`@keras.saving.register_keras_serializable()` and imported "
        f"before loading. Received: layer={header!r}"
    )


class FactorizedLayer:
    """Base of the per-class factorized layer subclasses; the loader.

    Registered as `keras_research>FactorizedLayer`. Its `from_config`
    rebuilds the original layer class as its factorized subclass, with the
    recorded ranks, so that when the layer builds, the same weights are
    created as the same factors.
    """

    _kr_original = None

    def get_config(self):
        original = type(self)._kr_original
        config = original.get_config(self)
        return {
            "layer": {
                **_add_weight_hook.class_header(original),
                "config": config,
            },
            "factorized": dict(self.__dict__.get("_kr_record", {})),
        }

    @classmethod
    def from_config(cls, config):
        if (
            not isinstance(config, dict)
            or not isinstance(config.get("layer"), dict)
            or not isinstance(config.get("factorized"), dict)
        ):
            raise ValueError(
                "A `keras_research>FactorizedLayer` config must be a dict "
                "with keys 'layer' (the original layer's serialized config) "
                f"and 'factorized' (weight path -> rank). Received: {config!r}"
            )
        original = _resolve_class(config["layer"])
        factorized = factorized_class(original)
        inner = dict(config["layer"].get("config", {}))
        record = {str(k): int(v) for k, v in config["factorized"].items()}
        with weight_creator_scope(pending_replay_creator(factorized, record)):
            instance = original.from_config.__func__(factorized, inner)
        if type(instance) is not factorized:
            raise TypeError(
                f"{original.__name__}.from_config returned an instance of "
                f"{type(instance).__name__}; a factorized layer can only be "
                "restored when `from_config` builds `cls(...)`."
            )
        instance.__dict__.setdefault("_kr_factorized", {})
        instance.__dict__["_kr_record"] = record
        return instance

    def save_own_variables(self, store):
        if not self.__dict__.get("_kr_factorized"):
            return super().save_own_variables(store)
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        owned = self.__dict__.get("_kr_factorized")
        if not owned:
            return super().load_own_variables(store)
        variables = self._trainable_variables + self._non_trainable_variables
        values = [np.asarray(store[str(i)]) for i in range(len(store.keys()))]
        if _shapes_match(variables, values):
            for variable, value in zip(variables, values):
                variable.assign(value)
            return
        # A full-rank file: one entry per weight the layer asked for, the
        # factors of a weight in place of its `left` factor.
        lefts = {id(w.left): w for w in owned.values()}
        rights = {id(w.right) for w in owned.values()}
        slots = [
            lefts.get(id(v), v) for v in variables if id(v) not in rights
        ]
        if _shapes_match(slots, values):
            for slot, value in zip(slots, values):
                slot.assign(value)
            return
        raise ValueError(
            f"Layer {self.name!r} holds factorized weights and cannot load "
            f"the stored variables of shapes {[v.shape for v in values]}. "
            "It accepts either its own variables, of shapes "
            f"{[tuple(v.shape) for v in variables]}, or a full-rank layer's, "
            f"of shapes {[tuple(s.shape) for s in slots]} (each factorized "
            "weight then keeps its truncated SVD, with a warning)."
        )


def _shapes_match(slots, values):
    return len(slots) == len(values) and all(
        tuple(s.shape) == tuple(v.shape) for s, v in zip(slots, values)
    )


def _dense_call(self, inputs, training=None):
    kernel = self.__dict__.get("_kernel")
    if (
        isinstance(kernel, FactorizedWeight)
        and not self.lora_enabled
        and self.quantization_mode is None
    ):
        x = ops.matmul(ops.matmul(inputs, kernel.left), kernel.right)
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
    return keras.layers.Dense.call(self, inputs, training=training)


def _embedding_call(self, inputs):
    table = self.__dict__.get("_embeddings")
    if (
        isinstance(table, FactorizedWeight)
        and not self.lora_enabled
        and self.quantization_mode is None
    ):
        if inputs.dtype != "int32" and inputs.dtype != "int64":
            inputs = ops.cast(inputs, "int32")
        outputs = ops.matmul(
            ops.take(table.left, inputs, axis=0), table.right
        )
        return ops.cast(outputs, dtype=self.compute_dtype)
    return keras.layers.Embedding.call(self, inputs)


def _conv_op(self, inputs, kernel):
    if isinstance(kernel, FactorizedWeight) and self.groups == 1:
        # conv(x, reshape(L @ R)) == conv(x, reshape(L)) @ R over channels.
        left = ops.reshape(kernel.left, kernel.shape[:-1] + (kernel.rank,))
        y = keras.layers.Conv2D.convolution_op(self, inputs, left)
        if self.data_format == "channels_last":
            return ops.matmul(y, kernel.right)
        y = ops.matmul(ops.moveaxis(y, 1, -1), kernel.right)
        return ops.moveaxis(y, -1, 1)
    return keras.layers.Conv2D.convolution_op(self, inputs, kernel)


def factorized_class(original):
    """The factorized subclass of layer class `original` (cached)."""
    if issubclass(original, FactorizedLayer):
        return original
    if original in _classes:
        return _classes[original]
    original_build = original.build

    @functools.wraps(original_build)
    def build(self, *args, **kwargs):
        record = self.__dict__.get("_kr_record")
        if record:
            with weight_creator_scope(replay_creator(self, record)):
                return original_build(self, *args, **kwargs)
        return original_build(self, *args, **kwargs)

    def get_config(self):
        return FactorizedLayer.get_config(self)

    if _add_weight_hook.is_default_get_config(original):
        # Keras generates the config of layers without `get_config` only
        # while `get_config` is the default one.
        get_config._is_default = True

    # The same `__name__` as the original: Keras names a layer's entry in
    # weights files after its class name, and a full-rank file must match.
    namespace = {
        "__module__": __name__,
        "__qualname__": original.__qualname__,
        "_kr_original": original,
        "build": build,
        "get_config": get_config,
    }
    if original.call is keras.layers.Dense.call:
        namespace["call"] = _dense_call
    elif original.call is keras.layers.Embedding.call:
        namespace["call"] = _embedding_call
    elif (
        original.call is keras.layers.Conv2D.call
        and original.convolution_op is keras.layers.Conv2D.convolution_op
    ):
        # Conv2D and Conv3D (Conv1D calls `ops.conv` itself).
        namespace["convolution_op"] = _conv_op
    cls = type(original.__name__, (FactorizedLayer, original), namespace)
    # Serialize every factorized class under the loader's name, then point
    # that name back at the loader.
    register = keras.saving.register_keras_serializable(
        package=PACKAGE, name=LOADER_NAME
    )
    register(cls)
    register(FactorizedLayer)
    _classes[original] = cls
    return cls


keras.saving.register_keras_serializable(package=PACKAGE, name=LOADER_NAME)(
    FactorizedLayer
)
