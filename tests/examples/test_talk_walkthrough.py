"""Smoke test: examples/talk_walkthrough.py runs end to end."""

import importlib.util
import pathlib
import re

SCRIPT = (
    pathlib.Path(__file__).resolve().parents[2]
    / "examples"
    / "talk_walkthrough.py"
)


def _load():
    spec = importlib.util.spec_from_file_location("talk_walkthrough", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_measures_every_section(capsys):
    _load().main(["--smoke"])
    out = capsys.readouterr().out
    for number in range(1, 6):
        assert f"=== {number}." in out, out
    sections = out.split("\n=== ")[1:]
    for section in sections:
        # Each section states the talk's claim and at least one measurement.
        assert "\nTalk: " in section and "\nHere: " in section, section
    assert "SKIPPED" not in out, out
    assert not re.search(r"\bnan\b", out, re.IGNORECASE), out
    # The measured speeds are printed as numbers with units and ratios.
    assert len(re.findall(r"\d+\.\d+ ms", out)) >= 10, out
    assert "Done in" in out


def test_missing_component_is_skipped_with_a_clear_message(capsys, monkeypatch):
    import keras_research

    module = _load()
    monkeypatch.delattr(keras_research.layers, "RaggedEmbeddingBag")
    module.section_ragged(module.SMOKE)
    out = capsys.readouterr().out
    assert "=== 5." in out
    assert (
        "SKIPPED: not available in this checkout: "
        "keras_research.layers.RaggedEmbeddingBag"
    ) in out
    assert "Here:" not in out
