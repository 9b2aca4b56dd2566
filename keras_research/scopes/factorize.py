"""`factorize`: post-hoc low-rank compression of a trained model."""

import keras
import numpy as np

from keras_research.scopes import _add_weight_hook, _factorized_layer
from keras_research.scopes._factorized_weight import (
    energy_rank,
    matrix_shape,
    relative_error,
    resolve_rank,
    split_factors,
    svd,
    validate_rank,
)
from keras_research.scopes.factorized_scope import (
    DEFAULT_MIN_SIZE,
    _is_float,
    _validate_filter,
    _validate_min_size,
)
from keras_research.scopes.weight_creator_scope import weight_creator_scope


class FactorizationReport:
    """What `factorize` did, one entry per factorized weight.

    Each entry is a dict with keys `layer` (layer name), `weight` (weight
    name), `path`, `shape`, `matrix_shape` ((m, n)), `rank`, `full_rank`,
    `params_before` (m * n), `params_after` (r * (m + n)) and
    `relative_error` (`||W - left @ right||_F / ||W||_F`). Iterate over
    the report for the entries; `print(report)` shows them as a table.

    Attributes:
        entries: list of dicts, in the order the weights were created.
        model_params_before: int, parameters of the original model.
        model_params_after: int, parameters of the factorized model.
    """

    def __init__(self, entries, model_params_before, model_params_after):
        self.entries = list(entries)
        self.model_params_before = int(model_params_before)
        self.model_params_after = int(model_params_after)

    def __iter__(self):
        return iter(self.entries)

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        return self.entries[index]

    def __str__(self):
        header = (
            f"{'weight':<40} {'shape':<18} {'rank':>5} {'before':>10} "
            f"{'after':>10} {'rel. error':>10}"
        )
        lines = [header, "-" * len(header)]
        for e in self.entries:
            lines.append(
                f"{e['path']:<40} {str(e['shape']):<18} {e['rank']:>5} "
                f"{e['params_before']:>10} {e['params_after']:>10} "
                f"{e['relative_error']:>10.4g}"
            )
        lines.append(
            f"model parameters: {self.model_params_before} -> "
            f"{self.model_params_after}"
        )
        return "\n".join(lines)

    __repr__ = __str__


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
    model, rank=None, *, energy=None, filter=None, min_size=DEFAULT_MIN_SIZE
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
    `filter`, those with at least `min_size` elements whose factors hold
    fewer parameters than the weight; with a `filter`, those it accepts.

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

    Returns:
        `(new_model, report)`, where `report` is a `FactorizationReport`.

    Raises:
        ValueError: if `model` is not a built `keras.Model`, if neither or
            both of `rank` and `energy` are given, on a bad `rank`,
            `energy`, `min_size` or `filter`.

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_research
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64)])
    >>> small, report = keras_research.factorize(model, rank=8)
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
        rank = validate_rank(rank)
    energy = _validate_energy(energy)
    filter = _validate_filter(filter)
    min_size = _validate_min_size(min_size)

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
    entries = []
    factorized_paths = set()

    def creator(next_creator, **kwargs):
        layer = kwargs["layer"]
        name = kwargs.get("name") or "variable"
        shape = kwargs.get("shape")
        dtype = kwargs.get("dtype") or layer.variable_dtype
        path = _normalize(
            _add_weight_hook.variable_path(layer, name), containers
        )
        original = originals.get(path)
        if (
            _factorized_layer.creating_factors()
            or original is None
            or shape is None
            or len(shape) < 2
            or not kwargs.get("trainable", True)
            or kwargs.get("constraint") is not None
            or not _is_float(dtype)
            or getattr(layer, "_kr_skip_factorization", False)
        ):
            return next_creator(**kwargs)
        shape = tuple(int(d) for d in shape)
        m, n = matrix_shape(shape)
        full_rank = min(m, n)
        if full_rank < 2:
            return next_creator(**kwargs)
        if filter is not None:
            if not filter(layer, name, shape):
                return next_creator(**kwargs)
        elif m * n < min_size:
            return next_creator(**kwargs)
        value = keras.ops.convert_to_numpy(original.value).reshape(m, n)
        u, s, vt = svd(value)
        if energy is not None:
            r = energy_rank(s, energy)
        else:
            r = min(resolve_rank(rank, full_rank), full_rank)
        if filter is None and r * (m + n) >= m * n:
            return next_creator(**kwargs)
        left, right = split_factors(u, s, vt, r)
        chain = _factorized_layer.creation_chain(layer)
        root = _factorized_layer.record_root(chain)
        key = _factorized_layer.relative_key(chain, root, name)
        weight = _factorized_layer.make_factorized(
            next_creator, kwargs, r, root, key, initial_factors=(left, right)
        )
        factorized_paths.add(path)
        entries.append(
            {
                "layer": layer.name,
                "weight": name,
                "path": path,
                "shape": shape,
                "matrix_shape": (m, n),
                "rank": int(r),
                "full_rank": int(full_rank),
                "params_before": int(m * n),
                "params_after": int(r * (m + n)),
                "relative_error": relative_error(s, r),
            }
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
    report = FactorizationReport(
        entries, model.count_params(), new_model.count_params()
    )
    return new_model, report
