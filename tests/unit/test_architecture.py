"""The package's rooms and the arrows that must never exist between them (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tap_emulator"

ROOMS = {
    "face": {"cli", "config", "app", "__main__"},
    "ingest": {"ingest"},
    "derive": {"derive"},
    "write": {"write"},
    "observe": {"observe"},
    "tools": {"tools"},
    "wire": {"_proto"},
}
NEVER = [
    ("derive", "ingest", "naming knows no gRPC"),
    ("write", "ingest", "the writer knows no gRPC"),
    ("write", "derive", "the writer publishes bytes under a given name"),
    ("ingest", "face", "nothing imports the command line"),
    ("derive", "face", "nothing imports the command line"),
    ("write", "face", "nothing imports the command line"),
    ("observe", "face", "nothing imports the command line"),
]
NO_GRPC_ROOMS = {"derive", "write"}


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tap_emulator" or len(parts) < 2:
        return None
    return next((room for room, names in ROOMS.items() if parts[1] in names), None)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules() -> list[tuple[str, Path]]:
    listed = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts)
        if "._proto" not in name:
            listed.append((name, path))
    return listed


def test_every_module_lives_in_a_room() -> None:
    homeless = [
        name for name, _ in modules() if name != "tap_emulator.__init__" and room_of(name) is None
    ]
    assert homeless == []


@pytest.mark.parametrize(("source", "target", "why"), NEVER)
def test_forbidden_arrow_is_absent(source: str, target: str, why: str) -> None:
    offenders = [
        f"{name} imports {imported}"
        for name, path in modules()
        if room_of(name) == source
        for imported in imports_of(path)
        if room_of(imported) == target
    ]
    assert offenders == [], why


def test_derive_and_write_never_import_grpc() -> None:
    offenders = [
        f"{name} imports {imported}"
        for name, path in modules()
        if room_of(name) in NO_GRPC_ROOMS
        for imported in imports_of(path)
        if imported.split(".")[0] in {"grpc", "grpclib", "grpc_health"}
    ]
    assert offenders == []


def test_only_the_entry_point_imports_the_command_line() -> None:
    importers = {
        name
        for name, path in modules()
        for imported in imports_of(path)
        if imported.startswith("tap_emulator.cli")
    }
    assert importers <= {"tap_emulator.__main__"}
