"""A helper script run in a subprocess and fed a JSON spec on stdin; its JSON answer comes
back on stdout. The test side of the subprocess clients (xds_client.py, tap_client.py): they
run where xds-protos may be imported, the tests never import it (design.md, Two copies of
Envoy's API)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

HELPERS = Path(__file__).resolve().parent


class ScriptRun:
    """One run of `script`, started at construction, answered in the background."""

    def __init__(self, script: str, spec: dict[str, Any]) -> None:
        self.script = script
        self.process = subprocess.Popen(
            [sys.executable, str(HELPERS / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._spec = json.dumps(spec)
        self._result: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._communicate, daemon=True)
        self._thread.start()

    def _communicate(self) -> None:
        out, err = self.process.communicate(self._spec)
        self._result = {"error": err} if self.process.returncode else json.loads(out)

    def running(self) -> bool:
        return self._thread.is_alive()

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.kill()
            self._thread.join(10)
            raise AssertionError(f"{self.script} did not finish in time")
        assert self._result is not None
        assert "error" not in self._result, self._result["error"]
        return self._result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


class ClientRun(ScriptRun):
    """The xds-protos StreamTaps client (helpers/xds_client.py)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("xds_client.py", spec)


class TapClientRun(ScriptRun):
    """The TLS-capable load client of the hardening tests (helpers/tap_client.py)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__("tap_client.py", spec)

    def streams(self, timeout: float = 120.0) -> list[dict[str, Any]]:
        return self.result(timeout)["streams"]  # type: ignore[no-any-return]


def tap_streams(spec: dict[str, Any], timeout: float = 120.0) -> list[dict[str, Any]]:
    return TapClientRun(spec).streams(timeout)
