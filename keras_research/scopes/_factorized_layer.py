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

Where the factorization is recorded and how it is replayed on load is in
`_records.py`; the computations without the full kernel in
`_fast_paths.py`.

The class swap (`layer.__class__ = ...` on a live layer) is deliberate:
Keras writes a layer's class into its saved config, and there is no
public way to make one live instance of `Dense` serialize as something
else. The swap keeps `isinstance(layer, Dense)` true and the class
`__name__` unchanged; `tests/scopes/test_keras_pins.py` pins what it relies
on.
"""

import functools

import keras
import numpy as np

from keras_research import _low_rank
from keras_research._export import PACKAGE
from keras_research.scopes import _add_weight_hook, _fast_paths, _records
from keras_research.scopes._factorized_weight import (
    FactorizedWeight,
    ProductRegularizer,
    SpectralInitializer,
)
from keras_research.scopes.weight_creator_scope import weight_creator_scope

LOADER_NAME = "FactorizedLayer"
_ALLOWED_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")

_classes = {}

creating_factors = _records.creating_factors


def make_factorized(next_creator, kwargs, rank, initial_factors=None):
    """Creates the factors of one weight through `next_creator`.

    Args:
        next_creator: the weight creator to make each factor with.
        kwargs: the `add_weight` arguments of the weight, with `layer`.
        rank: int, the absolute rank.
        initial_factors: optional `(left, right)` arrays to start from;
            by default the truncated SVD of a sample of the weight's own
            initializer.

    Returns:
        The `FactorizedWeight`.
    """
    layer = kwargs["layer"]
    shape = tuple(int(d) for d in kwargs["shape"])
    m, n = _low_rank.matrix_shape(shape)
    name = _records.weight_name(kwargs)
    initializer = kwargs.get("initializer")
    if initializer is None:
        initializer = "glorot_uniform"
    spectral = SpectralInitializer(initializer, shape, rank)
    if initial_factors is not None:
        spectral.set_factors(*initial_factors)
    common = dict(kwargs, regularizer=None, constraint=None)
    with _records.creating_factors_scope():
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
    weight = FactorizedWeight(left, right, shape, name)
    regularizer = keras.regularizers.get(kwargs.get("regularizer"))
    if regularizer is not None:
        left.regularizer = ProductRegularizer(regularizer, weight)
    chain = _records.creation_chain(layer)
    for each in _records.recording_layers(chain):
        _adopt(each)
    owned = layer.__dict__["_kr_factorized"]
    owned_key = name
    suffix = 1
    while owned_key in owned:
        suffix += 1
        owned_key = f"{name}_{suffix}"
    owned[owned_key] = weight
    _records.record(chain, name, rank)
    return weight


def _adopt(layer):
    """Swaps `layer` to its factorized class (once) and adds our state."""
    cls = type(layer)
    if not issubclass(cls, FactorizedLayer):
        object.__setattr__(layer, "__class__", factorized_class(cls))
    layer.__dict__.setdefault("_kr_factorized", {})
    layer.__dict__.setdefault("_kr_record", {})


def _replaying(layer):
    """A scope replaying `layer`'s recorded weights not yet re-created."""
    pending = layer.__dict__.get("_kr_pending")
    if not pending:
        return None
    return weight_creator_scope(
        _records.replay_creator(
            layer, layer.__dict__["_kr_record"], make_factorized
        )
    )


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
        instance = original.from_config.__func__(factorized, inner)
        if type(instance) is not factorized:
            raise TypeError(
                f"{original.__name__}.from_config returned an instance of "
                f"{type(instance).__name__}; a factorized layer can only be "
                "restored when `from_config` builds `cls(...)`."
            )
        instance.__dict__.setdefault("_kr_factorized", {})
        instance.__dict__["_kr_record"] = dict(record)
        # Weights built later (in `build`, or lazily while the layer is
        # first called) are re-created as factors until all exist again.
        instance.__dict__["_kr_pending"] = dict(record)
        return instance

    def __call__(self, *args, **kwargs):
        replay = _replaying(self)
        if replay is None:
            return super().__call__(*args, **kwargs)
        with replay:
            outputs = super().__call__(*args, **kwargs)
        if self.built:
            # Built and called: what is still pending was created by a
            # sublayer's own record (a wrapped layer deserialized by its
            # wrapper) or not at all; stop replaying either way.
            self.__dict__["_kr_pending"].clear()
        return outputs

    def build_from_config(self, config):
        # Keras may build from the config by tracing `call` directly
        # (layers and models with the default `build`).
        replay = _replaying(self)
        if replay is None:
            return super().build_from_config(config)
        with replay:
            return super().build_from_config(config)

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


def factorized_class(original):
    """The factorized subclass of layer class `original` (cached)."""
    if issubclass(original, FactorizedLayer):
        return original
    if original in _classes:
        return _classes[original]
    original_build = original.build

    @functools.wraps(original_build)
    def build(self, *args, **kwargs):
        replay = _replaying(self)
        if replay is None:
            return original_build(self, *args, **kwargs)
        with replay:
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
    namespace.update(_fast_paths.overrides(original))
    cls = type(original.__name__, (FactorizedLayer, original), namespace)
    # Serialize every factorized class under the loader's name; the name
    # itself stays registered to the loader.
    _add_weight_hook.set_serialized_name(cls, f"{PACKAGE}>{LOADER_NAME}")
    _classes[original] = cls
    return cls


keras.saving.register_keras_serializable(package=PACKAGE, name=LOADER_NAME)(
    FactorizedLayer
)
