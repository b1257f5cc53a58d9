"""The package's rooms and the arrows that must never exist between them.

The layout follows the data: ingest (gRPC sources) -> derive (names, redaction) -> write
(queue, writers, directory), observed by observe; the capture reader reads files back and
knows no server. Contracts every room shares (file names, closed label sets) and small shared
structures sit in modules that import nothing of ours beyond each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "tap_emulator"

ROOMS = {
    "face": {"cli", "__main__"},
    "settings": {"config"},
    "app": {"app"},
    "testing": {"testing"},
    "contract": {"layout", "labels"},
    "shared": {"bounded", "netaddr"},
    "ingest": {"ingest"},
    "derive": {"derive"},
    "write": {"write"},
    "observe": {"observe"},
    "captures": {"captures"},
    "web": {"web"},
    "forward": {"forward"},
    "tools": {"tools"},
    "wire": {"_proto"},
}
ALL = set(ROOMS)
SERVER = {"app", "ingest", "write", "observe", "web", "forward", "testing"}
NEVER = [
    *((room, "face", "nothing imports the command line") for room in ALL - {"face"}),
    *((room, "testing", "the product never imports its harness") for room in ALL - {"testing"}),
    *(
        (room, "app", "only the command line and the test harness build the server")
        for room in ALL - {"face", "testing", "app", "tools"}
    ),
    ("derive", "ingest", "naming knows no gRPC"),
    ("derive", "write", "derive never touches the disk"),
    ("derive", "observe", "derive reports through what it returns, not metrics"),
    ("write", "ingest", "the writer knows no gRPC"),
    ("write", "derive", "the writer publishes bytes under a given name"),
    ("observe", "ingest", "observing does not reach into the sources"),
    ("observe", "write", "observing reads what it is given"),
    ("forward", "ingest", "the forwarder is handed traces; it never reaches into the sources"),
    ("forward", "derive", "the forwarder sends the bytes it is given, named by nobody"),
    ("forward", "write", "forwarding and writing are independent of each other"),
    *(
        (room, "forward", "only the composition root wires the forwarder in")
        for room in ALL - {"forward", "app", "settings", "testing", "face"}
    ),
    *(("contract", room, "contracts import nothing of ours") for room in ALL - {"contract"}),
    *(("shared", room, "shared structures import nothing of ours") for room in ALL - {"shared"}),
    *(("captures", room, "the capture reader knows no server") for room in SERVER),
    ("captures", "tools", "tools build on the capture reader, never the other way"),
]
NO_GRPC_ROOMS = {"derive", "write", "captures", "contract", "shared"}


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


def test_rooms_without_a_network_never_import_grpc() -> None:
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


def test_the_checker_catches_a_forbidden_arrow(tmp_path: Path) -> None:
    """The rules above are only as good as the import walk: show it sees a bad import."""
    bad = tmp_path / "bad.py"
    bad.write_text("from tap_emulator.ingest.tapsink import TapSink\n")
    assert room_of("tap_emulator.derive.naming") == "derive"
    assert any(room_of(name) == "ingest" for name in imports_of(bad))
