"""`factorize`: post-hoc low-rank compression of a trained model."""

import keras
import numpy as np

from keras_research import _low_rank
from keras_research.scopes import _add_weight_hook, _factorized_layer
from keras_research.scopes import _selection as sel
from keras_research.scopes._selection import FactorizationReport
from keras_research.scopes.weight_creator_scope import weight_creator_scope

__all__ = ["FactorizationReport", "factorize"]


def _container_names(model):
    """Names of `model` and the Sequential/functional models inside it."""
    names = set()
    stack = [model]
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            if layer is model or _add_weight_hook.is_layer_container(layer):
                names.add(layer.name)
            stack.extend(getattr(layer, "layers", []))
    return names


def _normalize(path, containers):
    """A weight path without the names of container models.

    Where a layer's weights live under its model's name depends on whether
    the model built it (`Sequential`) or the user did; the rest of the
    path is the same in the original and the rebuilt model.
    """
    parts = path.split("/")
    return "/".join([p for p in parts[:-1] if p not in containers] + parts[-1:])


def _validate_energy(energy):
    if energy is None:
        return None
    if (
        isinstance(energy, bool)
        or not isinstance(energy, (int, float, np.floating, np.integer))
        or not 0.0 < float(energy) <= 1.0
    ):
        raise ValueError(
            "`energy` must be a float in (0, 1]: the fraction of the squared "
            "singular values each factorized weight keeps. "
            f"Received: energy={energy!r}"
        )
    return float(energy)


def factorize(
    model,
    rank=None,
    *,
    energy=None,
    filter=None,
    min_size=sel.DEFAULT_MIN_SIZE,
    min_dim=None,
):
    """Compresses a trained model by truncated SVD of its weights.

    Returns a new model of the same architecture in which each selected
    weight W (viewed as a matrix of shape (prod(shape[:-1]), shape[-1]))
    is stored as the factors of its best rank-r approximation
    (`left = U_r sqrt(S_r)`, `right = sqrt(S_r) V_r^T`), exactly as if the
    model had been built under `keras_research.factorized_scope`: it
    trains, saves and loads the same way. All other weights are copied.
    The original model is left untouched.

    The rank of each weight is either `rank` (capped at the weight's full
    rank min(m, n)) or, with `energy`, the smallest r whose singular
    values keep that fraction of the squared singular values, so that the
    relative reconstruction error is at most `sqrt(1 - energy)`.

    Weights are selected as in `factorized_scope`: trainable
    floating-point weights of rank >= 2 without a constraint; without a
    `filter`, those with at least `min_size` elements and a smaller side
    of at least `min_dim` whose factors hold fewer parameters than the
    weight; with a `filter`, those it accepts. The report says why each
    other matrix weight was copied at full rank, and a call that
    factorizes nothing (e.g. `energy=0.9` on weights whose spectrum is
    flat, so no rank saves parameters) warns and says why.

    Args:
        model: a built `keras.Model`.
        rank: int >= 1 or float in (0, 1] (a fraction of each weight's
            full rank). Exactly one of `rank` and `energy` must be given.
        energy: float in (0, 1], the fraction of the squared singular
            values (the "energy") to keep in each weight.
        filter: optional callable `filter(layer, name, shape) -> bool`
            choosing the weights to factorize. `layer` is the layer of the
            new model (same class, name and config as the original).
        min_size: int. Without a `filter`, weights with fewer elements are
            copied as they are. Defaults to `4096`.
        min_dim: int. Without a `filter`, weights whose matrix view has a
            smaller side below it are copied as they are. Defaults to
            `None`: `isqrt(min_size) // 2` (32 with the default
            `min_size`).

    Returns:
        `(new_model, report)`, where `report` is a `FactorizationReport`.

    Raises:
        ValueError: if `model` is not a built `keras.Model`, if neither or
            both of `rank` and `energy` are given, on a bad `rank`,
            `energy`, `min_size`, `min_dim` or `filter`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_research
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64)])
    >>> small, report = keras_research.factorize(model, rank=8)
    >>> report.summary()
    'factorized 1 of 1 matrix weights (4096 -> 1024 parameters)'
    >>> [tuple(w.shape) for w in small.weights]
    [(64, 8), (8, 64), (64,)]
    >>> report[0]["params_before"], report[0]["params_after"]
    (4096, 1024)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`model` must be a `keras.Model`. Received: model={model!r}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built (call it on data, or create it with "
            "`keras.Input`) before it can be factorized. "
            f"Received: model={model.name!r}, which is not built"
        )
    if (rank is None) == (energy is None):
        raise ValueError(
            "Pass exactly one of `rank` and `energy`. "
            f"Received: rank={rank!r}, energy={energy!r}"
        )
    if rank is not None:
        rank = _low_rank.validate_rank(rank)
    energy = _validate_energy(energy)
    filter = sel.validate_filter(filter)
    min_size = sel.validate_min_size(min_size)
    min_dim = sel.validate_min_dim(min_dim, min_size)

    containers = _container_names(model)
    originals = {}
    for variable in model.weights:
        key = _normalize(variable.path, containers)
        if key in originals:
            raise ValueError(
                f"`model` has two weights with the path {key!r} (after "
                "removing the names of Sequential and functional models); "
                "give its layers unique names to factorize it."
            )
        originals[key] = variable
    report = FactorizationReport()
    factorized_paths = set()

    def decide(path, shape, layer, name, original):
        """`(rank, left, right, error)`, or None (reported) to copy."""
        if energy is None or filter is not None:
            r, reason = sel.choose_rank(
                rank or 1.0, shape, min_size, min_dim, filter, layer, name
            )
        else:
            r, reason = None, sel.size_reason(shape, min_size, min_dim)
        if reason:
            report.skip(path, shape, reason)
            return None
        m, n = _low_rank.matrix_shape(shape)
        value = keras.ops.convert_to_numpy(original.value).reshape(m, n)
        u, s, vt = _low_rank.svd(value)
        if energy is not None:
            r = _low_rank.energy_rank(s, energy)
            reason = filter is None and sel.savings_reason(r, shape)
            if reason:
                report.skip(path, shape, f"energy={energy} needs {reason}")
                return None
        r = min(r, m, n)
        left, right = _low_rank.split_factors(u, s, vt, r)
        return r, left, right, _low_rank.relative_error(s, r)

    def creator(next_creator, **kwargs):
        layer = kwargs["layer"]
        name = kwargs.get("name") or "variable"
        shape = kwargs.get("shape")
        if (
            _factorized_layer.creating_factors()
            or not sel.is_matrix(shape)
            or getattr(layer, "_kr_skip_factorization", False)
        ):
            return next_creator(**kwargs)
        path = _normalize(
            _add_weight_hook.variable_path(layer, name), containers
        )
        original = originals.get(path)
        if original is None:
            return next_creator(**kwargs)
        shape = tuple(int(d) for d in shape)
        dtype = kwargs.get("dtype") or layer.variable_dtype
        reason = sel.excluded(kwargs, dtype)
        if reason:
            report.skip(path, shape, reason)
            return next_creator(**kwargs)
        decision = decide(path, shape, layer, name, original)
        if decision is None:
            return next_creator(**kwargs)
        r, left, right, error = decision
        weight = _factorized_layer.make_factorized(
            next_creator, kwargs, r, initial_factors=(left, right)
        )
        factorized_paths.add(path)
        report.add(
            path, shape, r, layer=layer.name, weight=name, error=error
        )
        return weight

    config = keras.saving.serialize_keras_object(model)
    with weight_creator_scope(creator):
        new_model = keras.saving.deserialize_keras_object(config)
        if not new_model.built:
            new_model.build_from_config(model.get_build_config())

    copied = set()
    for variable in new_model.weights:
        path = _normalize(variable.path, containers)
        original = originals.get(path)
        if original is None:
            continue
        if tuple(original.shape) != tuple(variable.shape):
            raise ValueError(
                f"Weight {variable.path!r} of the rebuilt model has shape "
                f"{tuple(variable.shape)} but the original has "
                f"{tuple(original.shape)}."
            )
        variable.assign(original.value)
        copied.add(path)
    missing = set(originals) - copied - factorized_paths
    if missing:
        raise ValueError(
            "Could not match these weights of the original model to the "
            f"rebuilt one (the model does not rebuild deterministically "
            f"from its config): {sorted(missing)}"
        )
    report.model_params_before = int(model.count_params())
    report.model_params_after = int(new_model.count_params())
    report.warn_if_empty("factorize")
    return new_model, report
