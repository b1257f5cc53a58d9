"""Regenerate tap_emulator/_proto from proto/ (run as `make proto`).

protoc writes imports such as `from envoy.config.core.v3 import base_pb2`, which would
resolve to the `xds-protos` distribution wherever it is installed (and two copies of the same
`envoy/...` files would then clash in protobuf's default pool). This script rewrites every
generated import of our own proto packages to stay inside `tap_emulator._proto`, and writes
the `__init__.py` files that make it a package.

`--check` regenerates into a temporary directory and fails if the committed code differs.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"
PACKAGE = "tap_emulator._proto"
TARGET = REPO / "tap_emulator" / "_proto"
OUR_ROOTS = ("envoy", "xds")
SERVICE_PROTOS = (
    "envoy/service/ext_proc/v3/external_processor.proto",
    "envoy/service/tap/v3/tap.proto",
)
_IMPORT = re.compile(rf"^(\s*from )((?:{'|'.join(OUR_ROOTS)})(?:\.\w+)*)( import )", re.MULTILINE)


def proto_files() -> list[str]:
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))


def run_protoc(out: Path) -> None:
    import grpc_tools  # only needed here; part of the test extras

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    base = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}"]
    subprocess.run(
        [*base, f"--python_out={out}", f"--pyi_out={out}", *proto_files()],
        check=True,
        cwd=PROTO_ROOT,
    )
    subprocess.run(
        [*base, f"--grpc_python_out={out}", *SERVICE_PROTOS],
        check=True,
        cwd=PROTO_ROOT,
    )


def rewrite_imports(out: Path) -> None:
    for path in sorted(out.rglob("*.py*")):
        text = path.read_text()
        fixed = _IMPORT.sub(rf"\g<1>{PACKAGE}.\g<2>\g<3>", text)
        if fixed != text:
            path.write_text(fixed)


def add_package_markers(out: Path) -> None:
    (out / "__init__.py").write_text(
        '"""Generated from proto/ by `make proto` (scripts/generate_proto.py); never edit."""\n'
    )
    for directory in sorted(p for p in out.rglob("*") if p.is_dir()):
        (directory / "__init__.py").touch()


def generate(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    run_protoc(out)
    rewrite_imports(out)
    add_package_markers(out)


def differences(left: Path, right: Path) -> list[str]:
    found: list[str] = []

    def walk(cmp: filecmp.dircmp[str], prefix: str) -> None:
        found.extend(f"{prefix}{name}" for name in cmp.left_only + cmp.right_only)
        found.extend(f"{prefix}{name}" for name in cmp.diff_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{prefix}{name}/")

    walk(filecmp.dircmp(left, right, ignore=["__pycache__"]), "")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed code is stale")
    args = parser.parse_args()
    if not args.check:
        generate(TARGET)
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        fresh = Path(scratch) / "_proto"
        generate(fresh)
        stale = differences(fresh, TARGET)
    if stale:
        print("tap_emulator/_proto is out of date; run `make proto`. Differs:", *stale, sep="\n  ")
        return 1
    print("tap_emulator/_proto is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
