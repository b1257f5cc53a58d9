"""The HAR 1.2 JSON schema (written from the specification into tests/fixtures/har) and the
check every test that reads a HAR makes with it, whoever wrote the HAR."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from tests.helpers.paths import FIXTURES

HAR_SCHEMA: dict[str, Any] = json.loads((FIXTURES / "har" / "har-1.2.schema.json").read_text())


def assert_valid_har(har: Any) -> None:
    """Raise jsonschema.ValidationError, naming the field, unless `har` is HAR 1.2."""
    jsonschema.validate(har, HAR_SCHEMA, format_checker=jsonschema.FormatChecker())
