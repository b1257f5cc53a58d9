"""Observe: gRPC core's own count of the calls this process's servers started.

Under overload gRPC core ends some calls (CANCELLED) before any handler is given them, and
neither the handlers nor, reliably, the proxy count them: Envoy's `ext_proc.streams_failed`
misses the ones that end after its filter is done with the request. Core's channelz counters
include every call it started, so calls started less calls our handlers were given is that
loss, visible on /metrics. The same counters are what the `grpcio-channelz` package serves
over gRPC; reading them in the process needs no extra service or dependency.
"""

from __future__ import annotations

import importlib
import json


def core_calls_started() -> int | None:
    """Calls started on every gRPC server of this process, or None where this grpcio does
    not expose its channelz counters."""
    try:
        # grpcio's own binding: no public accessor exists, and it has no type stubs.
        cygrpc = importlib.import_module("grpc._cython.cygrpc")
        servers = json.loads(cygrpc.channelz_get_servers(0)).get("server", [])
    except (ImportError, AttributeError, ValueError, TypeError):
        return None
    return sum(int(server.get("data", {}).get("callsStarted", 0)) for server in servers)
