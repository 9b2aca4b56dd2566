"""The factorization tools' imports point one way (issue 14, point 2).

public modules (`layers/factorized_dense.py`, `scopes/factorized_scope.py`,
`scopes/factorize.py`) -> private scope modules -> `_low_rank.py`
(the math, which imports nothing from the package).
"""

import ast
import pathlib

import pytest

import keras_research

PACKAGE = pathlib.Path(keras_research.__file__).parent


def _imports(relative):
    tree = ast.parse((PACKAGE / relative).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_math_module_imports_nothing_from_the_package():
    assert not [m for m in _imports("_low_rank.py")
                if m.startswith("keras_research")]


@pytest.mark.parametrize(
    "module", ["layers/factorized_dense.py", "_low_rank.py"]
)
def test_layers_do_not_import_scopes(module):
    assert not [m for m in _imports(module)
                if m.startswith("keras_research.scopes")]


def test_public_scope_modules_do_not_import_each_other():
    for module, other in [
        ("scopes/factorize.py", "keras_research.scopes.factorized_scope"),
        ("scopes/factorized_scope.py", "keras_research.scopes.factorize"),
    ]:
        assert not [m for m in _imports(module) if m.startswith(other)]


def test_modules_stay_small():
    for path in list((PACKAGE / "scopes").glob("*.py")) + [
        PACKAGE / "layers" / "factorized_dense.py",
        PACKAGE / "_low_rank.py",
    ]:
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.name} has {lines} lines"
