"""Runs `tap-emulator` in a process where xds-protos cannot be imported, as in the image.

Any import of the top-level packages xds-protos provides fails, so a product import that
silently resolved to xds-protos (design.md, Two copies of Envoy's API) would crash this process.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

BLOCKED = ("envoy", "xds", "udpa", "validate", "xds_protos")


class BlockXdsProtos(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] in BLOCKED:
            raise ImportError(f"{fullname} is blocked: the product must not need xds-protos")
        return None


sys.meta_path.insert(0, BlockXdsProtos())

from tap_emulator.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main([arg for arg in sys.argv[1:] if arg != "--"]))
