"""The supported versions agree everywhere they are written down.

`setup.cfg` declares them; the README states them and its test command;
`.ci/constraints/` holds the matrix, whose oldest and newest pairs `.ci/run`
tests; `docs/VERSIONS.md` records a result for every combination.
"""

import configparser
import pathlib
import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / ".ci" / "constraints"


def _read(relative):
    return (ROOT / relative).read_text()


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirements(value):
    return {
        r.name: r for r in map(Requirement, value.strip().splitlines())
    }


def _install_requires():
    return _requirements(_setup_cfg()["options"]["install_requires"])


def _extra(name):
    return _requirements(_setup_cfg()["options.extras_require"][name])


def _pins(combo):
    pins = {}
    for line in (CONSTRAINTS / f"{combo}.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.strip()] = Version(version.strip())
    return pins


def _combos():
    return sorted(p.stem for p in CONSTRAINTS.glob("*.txt"))


def _ci_ends():
    run = _read(".ci/run")
    return (re.search(r"^OLDEST=(\S+)$", run, re.M).group(1),
            re.search(r"^NEWEST=(\S+)$", run, re.M).group(1))


def _minor(version):
    return Version(f"{version.major}.{version.minor}")


def _floor(requirement):
    (floor,) = [Version(s.version) for s in requirement.specifier
                if s.operator == ">="]
    return floor


def test_declared_ranges():
    requires = _install_requires()
    assert set(map(str, requires["tensorflow"].specifier)) == {
        ">=2.16", "<2.22"}
    assert str(requires["keras"].specifier) == ">=3.10"
    assert "tensorflow-datasets" not in requires


@pytest.mark.parametrize("extra", ["examples", "test"])
def test_tfds_and_a_tensorflow_metadata_every_tensorflow_can_run(extra):
    requirements = _extra(extra)
    assert "tensorflow-datasets" in requirements
    # tensorflow-metadata 1.21 needs protobuf >= 6.31; TF <= 2.19 forbids it.
    metadata = requirements["tensorflow-metadata"].specifier
    assert "1.17.3" in metadata and "1.21.0" not in metadata


def test_each_combination_pins_supported_versions():
    requires = _install_requires()
    assert len(_combos()) >= 4
    for combo in _combos():
        pins = _pins(combo)
        assert set(pins) == {"tensorflow", "keras"}, combo
        for name, version in pins.items():
            assert requires[name].specifier.contains(version), (combo, name)
        tf, keras = _minor(pins["tensorflow"]), _minor(pins["keras"])
        assert combo == f"tf{tf}-keras{keras}", combo


def test_ci_runs_the_oldest_and_the_newest_supported_pair():
    requires = _install_requires()
    oldest, newest = _ci_ends()
    assert oldest in _combos() and newest in _combos()
    low, high = _pins(oldest), _pins(newest)
    # Oldest: the declared floors of both.
    assert _minor(low["tensorflow"]) == _floor(requires["tensorflow"])
    assert _minor(low["keras"]) == _floor(requires["keras"])
    # Newest: the newest TensorFlow minor below the declared ceiling, and no
    # combination newer than it.
    (ceiling,) = [Version(s.version) for s in requires["tensorflow"].specifier
                  if s.operator == "<"]
    assert _minor(high["tensorflow"]) == Version(
        f"{ceiling.major}.{ceiling.minor - 1}")
    for combo in _combos():
        for name in ("tensorflow", "keras"):
            assert low[name] <= _pins(combo)[name] <= high[name], combo


def test_readme_states_the_declared_versions_and_the_matrix():
    readme = _read("README.md")
    assert "`tensorflow>=2.16,<2.22`" in readme
    assert "`keras>=3.10`" in readme
    assert "TensorFlow 2.16 to 2.21 and Keras 3.10 or newer" in " ".join(
        readme.split())
    section = readme.split("## Supported versions", 1)[1].split("\n## ")[0]
    rows = re.findall(r"^\| `(\S+)` \| ([\d.]+) \| ([\d.]+) \| (.*) \|$",
                      section, re.M)
    assert sorted(row[0] for row in rows) == _combos()
    oldest, newest = _ci_ends()
    for combo, tf, keras, run_by in rows:
        pins = _pins(combo)
        assert (Version(tf), Version(keras)) == (
            pins["tensorflow"], pins["keras"]), combo
        expected = {oldest: "`.ci/run` (oldest)",
                    newest: "`.ci/run` (newest)"}.get(combo, "`.ci/matrix`")
        assert run_by == expected, combo


def test_readme_test_command_is_what_ci_runs():
    readme = _read("README.md")
    (line,) = [line for line in readme.splitlines()
               if 'pip install ".[test]" && ' in line]
    readme_pytest = line.split(" && ")[-1]
    matrix = _read(".ci/matrix").splitlines()
    marker = [i for i, text in enumerate(matrix)
              if text.startswith("# The README's test command")]
    assert len(marker) == 1
    ci_pytest = matrix[marker[0] + 1].split(" || ")[0].strip()
    assert ci_pytest == readme_pytest
    assert ci_pytest.startswith("python -m pytest ")
    assert "bash .ci/matrix" in _read(".ci/run")


def test_versions_doc_records_every_combination():
    doc = _read("docs/VERSIONS.md")
    for combo in _combos():
        pins = _pins(combo)
        assert re.search(
            rf"^\| `{re.escape(combo)}` \(TF {pins['tensorflow']}, Keras "
            rf"{pins['keras']}\) \|", doc, re.M), combo
