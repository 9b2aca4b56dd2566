"""Source policies (after TensorFlow Addons' source_code_test.py)."""

import ast
import inspect
import pathlib

import keras

import keras_research

PACKAGE_DIR = pathlib.Path(keras_research.__file__).parent

# The only modules allowed to import Keras internals, each because Keras 3
# offers no public hook for what it does (see their docstrings).
KERAS_SRC_ALLOWED = {
    "_compat.py",
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
        name for name, source in _sources()
        if name not in KERAS_SRC_ALLOWED
        and any(m.startswith("keras.src") for m in _imported_modules(source))
    ]
    assert not offenders, f"keras.src imported in {offenders}"


def test_no_tf_compat_v1():
    offenders = [name for name, source in _sources()
                 if "compat.v1" in source]
    assert not offenders, f"tf.compat.v1 used in {offenders}"


def _public_objects():
    for module in (keras_research.layers, keras_research.optimizers,
                   keras_research.callbacks):
        for name in module.__all__:
            yield getattr(module, name)


def test_every_public_class_is_registered():
    for obj in _public_objects():
        if not inspect.isclass(obj):
            continue
        registered = keras.saving.get_registered_name(obj)
        assert registered == f"keras_research>{obj.__name__}", (
            f"{obj.__name__} is registered as {registered!r}"
        )


def test_public_names_are_sorted_and_exported():
    for module in (keras_research.layers, keras_research.optimizers,
                   keras_research.callbacks, keras_research.activations,
                   keras_research.scopes, keras_research.testing):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"
