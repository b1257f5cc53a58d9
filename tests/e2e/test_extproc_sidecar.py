"""The ext_proc side streams through the emulator's own Istio sidecar, with real Envoys: the
capturing proxy (the tap-filter chart as rendered, Istio's auto mTLS towards the emulator's
pod) -> an Envoy standing in for the emulator's sidecar (mutual TLS in, its inbound HTTP
connection manager as Istio builds it, HTTP/2 to the emulator on loopback) -> the emulator.
See tests/helpers/sidecar.py for the settings and why.

What this pins, and why the emulator chart keeps its tap port out of its own sidecar:
- the side streams get through at all (the rendered filter names an :authority an HTTP/2 peer
  accepts; the cluster name it sent before has a "|" that the sidecar refuses), and at load
  and with a large transfer nothing is lost or held back while the emulator is healthy;
- when the emulator freezes, its sidecar still answers the capturing proxy's keepalive, so
  the proxy never drops the connection: a large transfer stays held back by side-stream flow
  control far longer than the keepalive would allow on a direct connection.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.chart_bootstrap import RunningEnvoy, running_envoy
from tests.helpers.emulator import EmulatorFactory, EmulatorProcess, wait_for
from tests.helpers.fault_rig import (
    LISTENER,
    HelperProcess,
    address,
    analysis_cluster_stats,
    capture_bootstrap,
    ext_proc_stats,
    extproc_counts,
    helper_process,
)
from tests.helpers.load import BackgroundDownload, PacedLoad
from tests.helpers.sidecar import (
    INBOUND_CLUSTER,
    SIDECAR_LISTENER,
    MeshCertificates,
    emulator_sidecar_bootstrap,
    mesh_certificates,
    through_sidecar,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

MIB = 1024 * 1024
DOWNLOAD_BYTES = 256 * MIB
# A short keepalive for the freeze: on a direct connection it would drop a frozen emulator's
# connection within 3 s.
SHORT_KEEPALIVE = {"extProc": {"keepalive": {"interval": "2s", "timeout": "1s"}}}
DIRECT_BOUND_SECONDS = 3.0
# How long the held-back transfer is watched: four times what the keepalive allows directly.
WATCH_SECONDS = 4 * DIRECT_BOUND_SECONDS
# The healthy path: a pause this long in a download would be a stall.
HEALTHY_GAP_BOUND_SECONDS = 5.0


@pytest.fixture(scope="module")
def bulk(envoy_binary: Path) -> Iterator[HelperProcess]:
    with helper_process("bulk_backend.py") as backend:
        yield backend


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> MeshCertificates:
    return mesh_certificates(tmp_path_factory.mktemp("mesh-ca"))


@dataclass(frozen=True)
class MeshPath:
    """The capturing proxy and the emulator's sidecar, both running."""

    capturing: RunningEnvoy
    sidecar: RunningEnvoy


@contextlib.contextmanager
def through_the_sidecar(
    envoy: Path,
    scratch: Path,
    backend_port: int,
    emulator: EmulatorProcess,
    certificates: MeshCertificates,
    values: Mapping[str, Any] | None = None,
) -> Iterator[MeshPath]:
    sidecar_bootstrap = emulator_sidecar_bootstrap(address(emulator.tap), certificates)
    with running_envoy(envoy, sidecar_bootstrap, scratch / "sidecar") as sidecar:
        sidecar_address = ("127.0.0.1", sidecar.ports[SIDECAR_LISTENER])
        rendered = capture_bootstrap(scratch / "render", backend_port, ("127.0.0.1", 1), values)
        bootstrap = through_sidecar(rendered, sidecar_address, certificates)
        with running_envoy(envoy, bootstrap, scratch / "capturing") as capturing:
            yield MeshPath(capturing, sidecar)


def test_through_the_emulators_sidecar_nothing_is_lost_or_held_back_while_it_is_healthy(
    envoy_binary: Path,
    bulk: HelperProcess,
    start_emulator: EmulatorFactory,
    certificates: MeshCertificates,
    tmp_path: Path,
) -> None:
    # Room in the writers' queue for the whole download (streamed, it is 256 MiB of segment
    # files): with the default 64 MiB the emulator may drop it whole, by design, on any path.
    emulator = start_emulator("--queue-max-bytes", "512MiB")
    with through_the_sidecar(envoy_binary, tmp_path, bulk.port, emulator, certificates) as path:
        port = path.capturing.ports[LISTENER]
        load = PacedLoad(port, rate_per_second=200, duration_seconds=5).start().join()
        downloaded = BackgroundDownload(port, f"/bytes/{DOWNLOAD_BYTES}").start().join(120)
        expected = load.sent + 1
        assert wait_for(lambda: extproc_counts(emulator.metrics_url).complete >= expected), (
            extproc_counts(emulator.metrics_url)
        )
        ext_proc = ext_proc_stats(path.capturing.admin)
        sidecar = analysis_cluster_stats(path.sidecar.admin, INBOUND_CLUSTER)
    counts = extproc_counts(emulator.metrics_url)
    print(
        f"through the sidecar: {load.summary()}; download {downloaded}; "
        f"complete {counts.complete:.0f} of {expected}"
    )
    assert load.succeeded == load.sent, load.summary()
    assert downloaded.status == 200 and downloaded.received_bytes == DOWNLOAD_BYTES, downloaded
    assert downloaded.longest_gap_seconds <= HEALTHY_GAP_BOUND_SECONDS, downloaded
    assert ext_proc["streams_failed"] == 0
    assert sidecar["upstream_rq_total"] == expected  # every side stream went through it
    assert counts.complete == expected
    assert counts.lost_streams == 0 and counts.incomplete == 0


def test_a_frozen_emulator_behind_its_sidecar_holds_a_large_transfer_past_the_keepalive(
    envoy_binary: Path,
    bulk: HelperProcess,
    start_emulator: EmulatorFactory,
    certificates: MeshCertificates,
    tmp_path: Path,
) -> None:
    emulator = start_emulator()
    with through_the_sidecar(
        envoy_binary, tmp_path, bulk.port, emulator, certificates, SHORT_KEEPALIVE
    ) as path:
        port = path.capturing.ports[LISTENER]
        load = PacedLoad(port, rate_per_second=100).start()
        transfer = BackgroundDownload(port, f"/bytes/{DOWNLOAD_BYTES}", timeout_seconds=300)
        transfer.start().wait_for_bytes(16 * MIB)
        os.kill(emulator.pid, signal.SIGSTOP)
        try:
            time.sleep(WATCH_SECONDS)
            held_seconds = transfer.seconds_since_last_read()
            finished_while_frozen = transfer.done()
            cluster = analysis_cluster_stats(path.capturing.admin)
            small = load.stop()
        finally:
            os.kill(emulator.pid, signal.SIGCONT)
        downloaded = transfer.join(120)
    print(
        f"frozen behind the sidecar: transfer held {held_seconds:.1f} s after "
        f"{WATCH_SECONDS:.0f} s frozen (direct bound {DIRECT_BOUND_SECONDS:.0f} s), then "
        f"{downloaded}; small requests meanwhile {small.summary()}; capturing proxy "
        f"keepalive timeouts {cluster.get('http2.keepalive_timeout', 0)}"
    )
    # The sidecar answers the capturing proxy's PINGs for the frozen emulator...
    assert cluster.get("http2.keepalive_timeout", 0) == 0
    # ...so nothing frees the transfer: it is still held long after the keepalive bound.
    assert not finished_while_frozen
    assert held_seconds >= WATCH_SECONDS - DIRECT_BOUND_SECONDS
    # Once the emulator runs again the transfer completes, intact.
    assert downloaded.status == 200 and downloaded.received_bytes == DOWNLOAD_BYTES, downloaded
