"""Where the tests find the repository, their helper scripts and the real Envoy vectors."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELPERS = REPO / "tests" / "helpers"
FIXTURES = REPO / "tests" / "fixtures"
VECTORS = FIXTURES / "vectors"
