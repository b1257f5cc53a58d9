"""The benchmark README's reference table is the committed reference run's, not typed."""

from __future__ import annotations

import importlib.util
import json
from types import ModuleType

import pytest

from tests.helpers.paths import REPO

GENERATOR = REPO / "benchmarks" / "reference_table.py"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("reference_table", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_matches_the_reference_run() -> None:
    generator = load_generator()
    readme = generator.README.read_text()
    assert readme == generator.expected_readme(), (
        "benchmarks/README.md drifted from results/reference/bench.json: "
        "run python benchmarks/reference_table.py"
    )


def test_a_changed_reference_figure_changes_the_table() -> None:
    generator = load_generator()
    reference = json.loads(generator.REFERENCE_JSON.read_text())
    before = generator.render(reference)
    reference["emulator_msgs_per_s"] += 1000
    assert generator.render(reference) != before


def test_readme_without_markers_is_refused() -> None:
    generator = load_generator()
    with pytest.raises(ValueError, match="markers"):
        generator.splice("# Benchmarks\n", "table")
