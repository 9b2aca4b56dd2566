"""Source policies (after TensorFlow Addons' source_code_test.py)."""

import ast
import inspect
import pathlib

import keras
import pytest

import keras_research

PACKAGE_DIR = pathlib.Path(keras_research.__file__).parent

# The only modules allowed to import Keras internals, each because Keras 3
# offers no public hook for what it does (see their docstrings).
KERAS_SRC_ALLOWED = {
    "_compat.py",
    "activations/_activation_names.py",
    "scopes/_add_weight_hook.py",
}


def _sources():
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        yield path.relative_to(PACKAGE_DIR).as_posix(), path.read_text()


def _imported_modules(source):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_no_keras_src_imports_outside_the_isolated_modules():
    offenders = [
        name
        for name, source in _sources()
        if name not in KERAS_SRC_ALLOWED
        and any(m.startswith("keras.src") for m in _imported_modules(source))
    ]
    assert not offenders, f"keras.src imported in {offenders}"


def test_no_tf_compat_v1():
    offenders = [name for name, source in _sources() if "compat.v1" in source]
    assert not offenders, f"tf.compat.v1 used in {offenders}"


def _public_objects():
    for module in (
        keras_research.activations,
        keras_research.callbacks,
        keras_research.layers,
        keras_research.optimizers,
    ):
        for name in module.__all__:
            yield getattr(module, name)


def test_every_public_activation_is_registered_and_resolvable():
    activations = keras_research.activations
    for name in activations.__all__:
        obj = getattr(activations, name)
        if isinstance(obj, activations.FusedActivation):
            registered = f"keras_research>{name}"
            assert keras.saving.get_registered_name(obj) == registered
            assert keras.activations.get(registered) is obj


def test_every_public_class_is_registered():
    for obj in _public_objects():
        if not inspect.isclass(obj):
            continue
        registered = keras.saving.get_registered_name(obj)
        assert registered == f"keras_research>{obj.__name__}", (
            f"{obj.__name__} is registered as {registered!r}"
        )


PUBLIC_MODULES = (
    keras_research,
    keras_research.activations,
    keras_research.callbacks,
    keras_research.layers,
    keras_research.optimizers,
    keras_research.scopes,
    keras_research.testing,
)


def _unexported_public_names(module):
    # Public attributes that are not submodules (those appear as attributes
    # once imported) must be listed in `__all__`.
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and name not in module.__all__
    )


def _sorting_problems(module):
    names = list(module.__all__)
    problems = []
    if names != sorted(names):
        problems.append(f"{module.__name__}.__all__ is not sorted: {names}")
    if len(set(names)) != len(names):
        problems.append(f"{module.__name__}.__all__ has duplicates")
    return problems


def test_public_names_are_sorted_and_exported():
    problems = []
    for module in PUBLIC_MODULES:
        problems += _sorting_problems(module)
        problems += [
            f"{module.__name__}.{name} is listed but missing"
            for name in module.__all__
            if not hasattr(module, name)
        ]
        problems += [
            f"{module.__name__}.{name} is public but not in __all__"
            for name in _unexported_public_names(module)
        ]
    assert not problems, "\n".join(problems)


def test_sorting_check_catches_an_unsorted_list():
    class Fake:
        __name__ = "fake"
        __all__ = ["b", "a", "b"]

    assert len(_sorting_problems(Fake)) == 2


# --- import direction (docs/ARCHITECTURE.md) --------------------------------
#
# A module in keras_research/<area>/ may import the private modules of its
# own area and the shared top-level private modules keras_research/_*.py,
# never keras_research/<other area>/_*.py (nor a private name of another
# area). Top-level modules import no area's private module.

# Known violations being fixed on other branches: each entry is
# (importing module, imported private module). The list is emptied when
# those branches are merged; never add to it.
CROSS_AREA_ALLOWED: set = set()


def _module_path(dotted):
    """`keras_research.a._b` -> "a/_b.py" (or "a/_b/__init__.py")."""
    parts = dotted.split(".")[1:]
    if not parts:
        return "__init__.py"
    base = PACKAGE_DIR.joinpath(*parts)
    if base.is_dir():
        return "/".join(parts) + "/__init__.py"
    return "/".join(parts) + ".py"


def _package_imports(name, source):
    """Yields (module path, imported private name or None) per import."""
    here = ["keras_research", *name.split("/")[:-1]]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = here[: len(here) - node.level + 1]
                module = ".".join(
                    anchor + ([node.module] if node.module else [])
                )
            else:
                module = node.module or ""
            targets = []
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if (PACKAGE_DIR / _module_path(sub)).exists():
                    targets.append((sub, None))  # a submodule
                else:
                    targets.append((module, alias.name))
        else:
            continue
        for module, imported in targets:
            if module == "keras_research" or module.startswith(
                "keras_research."
            ):
                yield _module_path(module), imported


def _area(path):
    return path.split("/")[0] if "/" in path else None


def _is_private(path):
    return any(
        part.startswith("_") and part not in ("__init__.py",)
        for part in path.split("/")
    )


def _cross_area_imports(sources):
    found = set()
    for name, source in sources:
        for target, imported in _package_imports(name, source):
            area, target_area = _area(name), _area(target)
            if target_area is None or target_area == area:
                continue  # shared top-level modules, or the same area
            private_name = imported is not None and imported.startswith("_")
            if _is_private(target) or private_name:
                shown = f"{target}:{imported}" if private_name else target
                found.add((name, shown))
    return found


def test_no_module_imports_another_areas_private_module():
    found = _cross_area_imports(_sources())
    new = sorted(found - CROSS_AREA_ALLOWED)
    assert not new, (
        "These modules import another area's private module (see "
        f"docs/ARCHITECTURE.md): {new}"
    )
    fixed = sorted(CROSS_AREA_ALLOWED - found)
    assert not fixed, f"Remove fixed entries from CROSS_AREA_ALLOWED: {fixed}"


@pytest.mark.parametrize(
    "name,source,expected",
    [
        ("layers/a.py", "from keras_research.scopes._w import f", True),
        ("layers/a.py", "from keras_research.scopes import _w", True),
        ("layers/a.py", "import keras_research.scopes._w", True),
        ("layers/a.py", "from ..scopes._w import f", True),
        ("layers/a.py", "from keras_research.scopes.w import _f", True),
        ("_compat.py", "from keras_research.scopes._w import f", True),
        ("layers/a.py", "from keras_research.scopes import w", False),
        ("layers/a.py", "from keras_research.layers._ops import f", False),
        ("layers/a.py", "from ._ops import f", False),
        ("layers/a.py", "from keras_research import _checks", False),
        ("layers/a.py", "from keras_research._xla import f", False),
        ("layers/a.py", "import keras_research", False),
    ],
)
def test_cross_area_check_catches_private_imports(name, source, expected):
    assert bool(_cross_area_imports([(name, source)])) is expected
