"""Runnable Envoy bootstraps built from what the tap-filter chart renders, for tests that need a
proxy configured the way Istio would configure it, without Istio.

`chart_bootstrap(values, ...)` renders the chart with helm (as tests/deploy does) and returns a
bootstrap dict in which:

- each rendered capture point (inbound, outbound, gateway) is a listener of its own, named after
  the point, on `listen_host` port 0, with `traffic_direction` as Istio sets it; the HTTP
  filter the chart inserts sits, exactly as rendered, just before the router (after it come
  the caller's `extra_http_filters`, for example `file_tap_filter(...)` for side-by-side
  captures); a point whose `match.proxy.proxyVersion` does not select `Workload.istio_version`
  gets no filter, as Istio would leave it out;
- every listener routes to the caller's backends (HTTP/1.1 or h2c clusters), first matching
  prefix first;
- the analysis service's cluster `outbound|<servicePort>||<serviceFqdn>` points at the caller's
  emulator address over HTTP/2, built as Istio generates it (circuit breakers at 4294967295,
  HTTP/2 protocol options) with the chart's CLUSTER patches merged the way Istio merges them;
- the node is an Istio sidecar: id `sidecar~IP~POD.NS~NS.svc.cluster.local`, cluster
  `WORKLOAD.NS`, metadata NAMESPACE, NAME, WORKLOAD_NAME, ISTIO_VERSION;
- with `tracing=True`, every connection manager traces with Zipkin to a collector nobody
  listens on, as Istio's default tracer does (128-bit trace ids, Istio's 1 % sampling unless
  told otherwise), so side streams carry `x-b3-*` metadata;
- admin listens on 127.0.0.1 port 0: start Envoy with `--admin-address-path`, then
  `listener_ports(admin)` gives each listener's port; `running_envoy(...)` does all of that.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.deploy_support import FILTER_CHART, Helm, find_tool
from tests.helpers.harness import unique_base_id

Obj = dict[str, Any]

LOOPBACK = "127.0.0.1"
# Nothing listens on port 1 (tcpmux): a connection there is refused at once.
DEAD_ADDRESS = (LOOPBACK, 1)
ROUTER = "envoy.filters.http.router"
HCM = "envoy.filters.network.http_connection_manager"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# Istio puts sidecar inbound listeners INBOUND, and builds outbound and gateway ones OUTBOUND.
TRAFFIC_DIRECTION = {
    "SIDECAR_INBOUND": "INBOUND",
    "SIDECAR_OUTBOUND": "OUTBOUND",
    "GATEWAY": "OUTBOUND",
}
# What Istio's generated clusters set when no DestinationRule says otherwise.
ISTIO_UNLIMITED = 4294967295
ISTIO_CONNECT_TIMEOUT = "10s"
ISTIO_TRACING_SAMPLING_PERCENT = 1.0
# Map fields of Cluster: Istio's MERGE replaces an entry of these whole instead of merging it.
_MAP_FIELDS = {"typed_extension_protocol_options", "filter_metadata", "typed_filter_metadata"}


@dataclass(frozen=True)
class Backend:
    """An upstream the listeners route to: requests whose path starts with `prefix`."""

    cluster: str
    port: int
    http2: bool = False
    prefix: str = "/"
    host: str = LOOPBACK
    timeout: str = "15s"


@dataclass(frozen=True)
class Workload:
    """The pod whose sidecar the bootstrap plays; its identity is what Istio gives Envoy."""

    namespace: str
    pod: str = "client-5d8f7c9b6-x2k4q"
    ip: str = "10.0.0.17"
    workload: str = "client"
    istio_version: str = "1.28.0"

    @property
    def node_id(self) -> str:
        return f"sidecar~{self.ip}~{self.pod}.{self.namespace}~{self.namespace}.svc.cluster.local"

    def node(self) -> Obj:
        return {
            "id": self.node_id,
            "cluster": f"{self.workload}.{self.namespace}",
            "metadata": {
                "NAMESPACE": self.namespace,
                "NAME": self.pod,
                "WORKLOAD_NAME": self.workload,
                "ISTIO_VERSION": self.istio_version,
                "LABELS": {"app": self.workload},
            },
        }


@dataclass(frozen=True)
class CapturePoint:
    """One HTTP_FILTER patch of the chart: where it goes and the filter it inserts."""

    name: str  # inbound, outbound or gateway: the last token of the EnvoyFilter's name
    context: str
    http_filter: Obj
    proxy_version: str | None


# --- reading what the chart rendered ---------------------------------------------------------


def render_filter_chart(
    values: Mapping[str, Any] | None,
    *,
    scratch: Path,
    release: str = "pi2-e2e",
    namespace: str = "demo-ns",
) -> list[Obj]:
    """The objects `helm template` renders for the filter chart with these values."""
    helm = Helm(find_tool("helm"), scratch)
    return helm.template(FILTER_CHART, release, namespace, values).objects


def _patches(objects: Iterable[Obj], apply_to: str) -> list[tuple[Obj, Obj]]:
    return [
        (envoy_filter, patch)
        for envoy_filter in objects
        if envoy_filter["kind"] == "EnvoyFilter"
        for patch in envoy_filter["spec"]["configPatches"]
        if patch["applyTo"] == apply_to
    ]


def capture_points(objects: Iterable[Obj]) -> list[CapturePoint]:
    """Every HTTP filter the chart inserts before the router, with its context."""
    points = []
    for envoy_filter, patch in _patches(objects, "HTTP_FILTER"):
        match = patch["match"]
        assert match["listener"]["filterChain"]["filter"]["subFilter"]["name"] == ROUTER
        assert patch["patch"]["operation"] == "INSERT_BEFORE"
        points.append(
            CapturePoint(
                name=envoy_filter["metadata"]["name"].rsplit("-", 1)[-1],
                context=match["context"],
                http_filter=copy.deepcopy(patch["patch"]["value"]),
                proxy_version=match.get("proxy", {}).get("proxyVersion"),
            )
        )
    return points


def cluster_patches(objects: Iterable[Obj]) -> list[Obj]:
    """The CLUSTER patches (match and patch) the chart renders."""
    return [copy.deepcopy(patch) for _, patch in _patches(objects, "CLUSTER")]


def analysis_cluster_name(objects: Iterable[Obj]) -> str | None:
    """The cluster the rendered filters send to (`outbound|<port>||<fqdn>`), if any."""
    found = re.search(r'"cluster_name": "(outbound\|[^"]+)"', json.dumps(list(objects)))
    return found.group(1) if found else None


def selects(proxy_version: str | None, istio_version: str) -> bool:
    """Whether a patch's match.proxy.proxyVersion selects a proxy of this Istio version."""
    return not proxy_version or re.search(proxy_version, istio_version) is not None


# --- building Envoy configuration ------------------------------------------------------------


def istio_merge(base: Obj, patch: Obj) -> Obj:
    """`patch` merged into `base` as Istio's EnvoyFilter MERGE does: nested messages merge,
    lists are appended to, scalars and typed (`@type`) messages are replaced, and an entry of a
    map field is replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        current = merged.get(key)
        if key in _MAP_FIELDS and isinstance(current, dict) and isinstance(value, dict):
            current.update(copy.deepcopy(value))
        elif isinstance(current, dict) and isinstance(value, dict) and "@type" not in value:
            merged[key] = istio_merge(current, value)
        elif isinstance(current, list) and isinstance(value, list):
            merged[key] = current + copy.deepcopy(value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_assignment(name: str, host: str, port: int) -> Obj:
    endpoint = {"address": {"socket_address": {"address": host, "port_value": port}}}
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}]}


def _http2_options(http2_protocol_options: Obj | None = None) -> Obj:
    return {
        HTTP_PROTOCOL_OPTIONS: {
            "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
            "explicit_http_config": {"http2_protocol_options": http2_protocol_options or {}},
        }
    }


def istio_cluster(name: str, host: str, port: int) -> Obj:
    """An outbound cluster for a gRPC service port as Istio generates it (endpoints static)."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": ISTIO_CONNECT_TIMEOUT,
        "lb_policy": "LEAST_REQUEST",
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": ISTIO_UNLIMITED,
                    "max_pending_requests": ISTIO_UNLIMITED,
                    "max_requests": ISTIO_UNLIMITED,
                    "max_retries": ISTIO_UNLIMITED,
                    "track_remaining": True,
                }
            ]
        },
        "typed_extension_protocol_options": _http2_options(),
        "load_assignment": _load_assignment(name, host, port),
    }


def backend_cluster(backend: Backend) -> Obj:
    cluster: Obj = {
        "name": backend.cluster,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": _load_assignment(backend.cluster, backend.host, backend.port),
    }
    if backend.http2:
        cluster["typed_extension_protocol_options"] = _http2_options()
    return cluster


def file_tap_filter(
    path_prefix: Path,
    *,
    streaming: bool = False,
    max_buffered_rx_bytes: int = 1048576,
    max_buffered_tx_bytes: int = 1048576,
) -> Obj:
    """Envoy's tap filter writing one PROTO_BINARY file per trace under `path_prefix`."""
    return {
        "name": "envoy.filters.http.tap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
            "common_config": {
                "static_config": {
                    "match": {"any_match": True},
                    "output_config": {
                        "streaming": streaming,
                        "max_buffered_rx_bytes": max_buffered_rx_bytes,
                        "max_buffered_tx_bytes": max_buffered_tx_bytes,
                        "sinks": [
                            {
                                "format": "PROTO_BINARY",
                                "file_per_tap": {"path_prefix": str(path_prefix)},
                            }
                        ],
                    },
                }
            },
        },
    }


def _zipkin(sampling_percent: float) -> Obj:
    return {
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": "zipkin",
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "trace_id_128bit": True,
                "shared_span_context": False,
            },
        },
        "random_sampling": {"value": sampling_percent},
    }


def _routes(backends: Sequence[Backend]) -> list[Obj]:
    return [
        {
            "match": {"prefix": backend.prefix},
            "route": {"cluster": backend.cluster, "timeout": backend.timeout},
        }
        for backend in backends
    ]


def _listener(
    name: str,
    direction: str,
    http_filters: list[Obj],
    backends: Sequence[Backend],
    listen_host: str,
    tracing: Obj | None,
) -> Obj:
    connection_manager: Obj = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": {
            "name": name,
            "virtual_hosts": [{"name": name, "domains": ["*"], "routes": _routes(backends)}],
        },
        "http_filters": [
            *http_filters,
            {
                "name": ROUTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    if tracing is not None:
        connection_manager["tracing"] = tracing
    return {
        "name": name,
        "traffic_direction": direction,
        "address": {"socket_address": {"address": listen_host, "port_value": 0}},
        "filter_chains": [{"filters": [{"name": HCM, "typed_config": connection_manager}]}],
    }


def build_bootstrap(
    objects: Sequence[Obj],
    *,
    backends: Sequence[Backend],
    emulator: tuple[str, int],
    workload: Workload,
    tracing: bool = False,
    tracing_sampling_percent: float = ISTIO_TRACING_SAMPLING_PERCENT,
    extra_http_filters: Sequence[Obj] = (),
    listen_host: str = LOOPBACK,
    zipkin_address: tuple[str, int] = DEAD_ADDRESS,
) -> Obj:
    """A bootstrap that runs the rendered `objects` as an Istio sidecar of `workload` would."""
    assert backends, "give at least one backend to route to"
    points = capture_points(objects)
    assert points, "the rendered chart inserts no HTTP filter"
    zipkin = _zipkin(tracing_sampling_percent) if tracing else None
    listeners = []
    for point in points:
        rendered = (
            [point.http_filter] if selects(point.proxy_version, workload.istio_version) else []
        )
        filters = [*rendered, *copy.deepcopy(list(extra_http_filters))]
        listeners.append(
            _listener(
                point.name,
                TRAFFIC_DIRECTION[point.context],
                filters,
                backends,
                listen_host,
                zipkin,
            )
        )
    clusters = [backend_cluster(backend) for backend in backends]
    analysis = analysis_cluster_name(objects)
    if analysis is not None:
        cluster = istio_cluster(analysis, *emulator)
        for patch in cluster_patches(objects):
            match = patch["match"]
            if match.get("cluster", {}).get("name") != analysis:
                continue
            if not selects(match.get("proxy", {}).get("proxyVersion"), workload.istio_version):
                continue
            assert patch["patch"]["operation"] == "MERGE"
            cluster = istio_merge(cluster, patch["patch"]["value"])
        clusters.append(cluster)
    if tracing:
        clusters.append(
            backend_cluster(Backend("zipkin", zipkin_address[1], host=zipkin_address[0]))
        )
    return {
        "node": workload.node(),
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def chart_bootstrap(
    values: Mapping[str, Any] | None,
    *,
    scratch: Path,
    backends: Sequence[Backend],
    emulator: tuple[str, int],
    workload: Workload,
    release: str = "pi2-e2e",
    **options: Any,
) -> Obj:
    """Render the filter chart with `values` in `workload.namespace`, then `build_bootstrap`."""
    objects = render_filter_chart(
        values, scratch=scratch, release=release, namespace=workload.namespace
    )
    return build_bootstrap(
        objects, backends=backends, emulator=emulator, workload=workload, **options
    )


def write_bootstrap(bootstrap: Obj, path: Path) -> Path:
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return path


# --- a running Envoy -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningEnvoy:
    process: subprocess.Popen[bytes]
    admin: str  # host:port
    ports: dict[str, int]  # listener name -> bound port
    log: Path

    def url(self, listener: str, path: str = "/") -> str:
        return f"http://{LOOPBACK}:{self.ports[listener]}{path}"


def _wait_for(condition: Any, what: str, deadline: float, process: Any, log: Path) -> Any:
    while True:
        if process.poll() is not None:
            raise AssertionError(
                f"envoy exited ({process.returncode}) before {what}:\n{log.read_text()[-3000:]}"
            )
        try:
            found = condition()
        except (OSError, urllib.error.URLError, ValueError, KeyError):
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"envoy: no {what} in time:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def running_envoy(
    envoy: Path, bootstrap: Obj, workdir: Path, *, timeout_seconds: float = 30.0
) -> Iterator[RunningEnvoy]:
    """Envoy running `bootstrap` (one worker), ready and with every listener bound; stopped
    (SIGTERM, then SIGKILL) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_bootstrap(bootstrap, workdir / "envoy-bootstrap.yaml")
    admin_path = workdir / "envoy-admin-address"
    admin_path.unlink(missing_ok=True)
    log = workdir / "envoy.log"
    argv = [str(envoy), "-c", str(config), "--base-id", str(unique_base_id())]
    argv += ["--admin-address-path", str(admin_path), "--concurrency", "1", "--log-level", "warn"]
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_seconds
        admin = _wait_for(
            lambda: admin_path.read_text().strip(), "admin address", deadline, process, log
        )

        def bound() -> dict[str, int] | None:
            ports = listener_ports(admin)
            return ports if ports and all(ports.values()) else None

        ports = _wait_for(bound, "bound listeners", deadline, process, log)
        _wait_for(
            lambda: _get_text(f"http://{admin}/ready") == "LIVE", "LIVE", deadline, process, log
        )
        yield RunningEnvoy(process, admin, ports, log)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode().strip())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def listener_ports(admin: str) -> dict[str, int]:
    """Each listener's bound port, by name, from Envoy's admin `/listeners` (admin: host:port)."""
    listing = _get_json(f"http://{admin}/listeners?format=json")
    ports = {}
    for status in listing["listener_statuses"]:
        ports[status["name"]] = int(status["local_address"]["socket_address"]["port_value"])
    return ports


def counters(admin: str, prefix: str = "") -> dict[str, int]:
    """Envoy's counters whose names start with `prefix`, from admin `/stats`."""
    listing = _get_json(f"http://{admin}/stats?format=json&filter=^{re.escape(prefix)}")
    return {
        stat["name"]: int(stat["value"])
        for stat in listing["stats"]
        if "value" in stat and stat["name"].startswith(prefix)
    }
