"""Where a factorization is recorded, under which key, and its replay.

A factorized weight is recorded on every layer that may rebuild it on
load, under the weight's key below that layer:

- the *record root*, the outermost layer being built when the weight was
  created that is not a plain `Sequential` / functional model (the layer
  whose config rebuilds it: `MultiHeadAttention` for its query kernel, a
  custom layer for the `Embedding`s its `__init__` creates);
- every layer between the root and the owner, and the owner itself
  (`kernel`): used when that layer is serialized on its own, e.g. the
  `Dense` that `TimeDistributed.from_config` deserializes.

A key names each layer below the root by its name when the name was given
(`query/kernel`), and by the attribute that holds it in its parent when
Keras made the name up (`token_emb/embeddings`): auto-generated names
(`embedding_3`) change every time a model is rebuilt, attributes do not.

On load, a root replays its record while it builds *and* while it is
called (sublayers built lazily during a functional trace), until every
recorded weight exists again.
"""

import threading

import keras

from keras_research.scopes import _add_weight_hook

_state = threading.local()


class creating_factors_scope:
    """Marks that this thread is creating the factors of a weight."""

    def __enter__(self):
        _state.factor_depth = getattr(_state, "factor_depth", 0) + 1

    def __exit__(self, *exc_info):
        _state.factor_depth -= 1
        return False


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


def _attribute_of(parent, child):
    """The attribute of `parent` that holds `child`, or None."""
    if isinstance(parent, keras.Model) and hasattr(parent, "layers"):
        for index, layer in enumerate(parent.layers):
            if layer is child:
                return f"layers[{index}]"
    items = sorted(vars(parent).items(), key=lambda kv: kv[0].startswith("_"))
    for attr, value in items:
        if value is child:
            return attr
    for attr, value in items:
        if attr in ("_layers", "_tracker") or not isinstance(
            value, (list, tuple)
        ):
            continue
        for index, item in enumerate(value):
            if item is child:
                return f"{attr}[{index}]"
    return None


def _component(parent, child):
    if _add_weight_hook.has_auto_name(child):
        attr = _attribute_of(parent, child)
        if attr is not None:
            return attr
    return child.name


def relative_key(chain, root, name):
    """The key of weight `name` below `root`, or None if not below it."""
    for index, layer in enumerate(chain):
        if layer is root:
            below = chain[index:]
            parts = [
                _component(parent, child)
                for parent, child in zip(below, below[1:])
            ]
            return "/".join(parts + [name])
    return None


def weight_name(kwargs):
    return kwargs.get("name") or "variable"


def _note(layer, key, rank):
    layer.__dict__.setdefault("_kr_record", {})[key] = int(rank)
    pending = layer.__dict__.get("_kr_pending")
    if pending:
        pending.pop(key, None)


def recording_layers(chain):
    """The layers of `chain` that record a weight its last layer owns.

    The record root and every layer below it except plain containers:
    whichever of them is serialized on its own (a `GRU` inside
    `Bidirectional`, a `Dense` inside `TimeDistributed`) rebuilds its
    part.
    """
    root = record_root(chain)
    start = next(i for i, layer in enumerate(chain) if layer is root)
    return [
        layer
        for layer in chain[start:]
        if layer is chain[-1]
        or not _add_weight_hook.is_layer_container(layer)
    ]


def record(chain, name, rank):
    """Records weight `name` of `chain[-1]` on each recording layer."""
    for layer in recording_layers(chain):
        _note(layer, relative_key(chain, layer, name), rank)


def replay_creator(root, recorded, make_factorized):
    """A creator that re-factorizes the weights named in `recorded`.

    Made when `root` starts building or being called. Keras builds some
    layers (subclassed models) by tracing `call` without opening their
    name scope: a layer built then, below the layers that were already
    building, counts as below `root`.
    """
    base = _add_weight_hook.building_layers()

    def creator(next_creator, **kwargs):
        if creating_factors():
            return next_creator(**kwargs)
        chain = creation_chain(kwargs["layer"])
        if not any(layer is root for layer in chain):
            if chain[: len(base)] != base or len(chain) == len(base):
                return next_creator(**kwargs)
            chain = [root] + chain[len(base) :]
        key = relative_key(chain, root, weight_name(kwargs))
        if key is not None and key in recorded:
            weight = make_factorized(next_creator, kwargs, recorded[key])
            root.__dict__.get("_kr_pending", {}).pop(key, None)
            return weight
        return next_creator(**kwargs)

    return creator

