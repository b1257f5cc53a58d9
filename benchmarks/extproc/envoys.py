"""Bootstraps of the two Envoys of the ext_proc benchmark, as dicts (written as JSON).

The Envoy under test has one listener per arm, the same route to the same upstream on each:

- ``notap``: the router alone;
- ``tap``: Envoy's HTTP tap filter, buffered traces, ``PROTO_BINARY`` into one file per
  transaction (``file_per_tap``) in a tmpfs;
- ``extproc``: the ext_proc filter in observability mode, configured as the tap-filter chart
  renders it (initial metadata, processing mode, request attributes, deferred close), to the
  emulator's port.

The upstream is a second Envoy whose routes answer with ``direct_response`` after buffering
the request (so a POST's body has gone through the tapped proxy before the answer comes
back): no Python in the path of the measured proxy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Json = dict[str, Any]

ARMS = ("notap", "tap", "extproc")
NODE_ID = "sidecar~127.0.0.1~bench-client-0.bench~bench.svc.cluster.local"
NODE_CLUSTER = "bench-client.bench"
NAMESPACE = "bench"
TAP_ID = "bench-inbound"
#: What the chart's defaults keep of each body (trace.maxBufferedRxBytes / TxBytes).
MAX_BUFFERED_BYTES = 1024 * 1024
#: The chart's default extProc.deferredCloseTimeout.
DEFERRED_CLOSE = "5s"
#: Istio generates its clusters with these circuit breakers; plain Envoy's default of 1024
#: concurrent requests would cap the side streams at about 200 transactions/s (5 s close).
UNLIMITED = 4294967295
GET_BODY_BYTES = 256
POST_ANSWER = "accepted\n"
#: The unary call's answer: a 32-byte protobuf body (the bridge frames it).
GRPC_ANSWER = bytes(range(32))
PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
GRPC_PREFIX = "/bench.Echo/"
ZIPKIN_CLUSTER = "zipkin"


def _address(port: int) -> Json:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _static_cluster(name: str, port: int, *, http2_options: Json | None = None) -> Json:
    cluster: Json = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": UNLIMITED,
                    "max_pending_requests": UNLIMITED,
                    "max_requests": UNLIMITED,
                    "max_retries": UNLIMITED,
                }
            ]
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": http2_options or {}},
            }
        },
    }
    return cluster


def _listener(name: str, route_config: Json, http_filters: list[Json]) -> Json:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        },
    }
    manager = {
        "@type": "type.googleapis.com/"
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "route_config": route_config,
        "http_filters": [*http_filters, router],
    }
    return {
        "name": name,
        "address": _address(0),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }


def _admin() -> Json:
    return {"address": _address(0)}


def tap_filter(tap_dir: Path) -> Json:
    return {
        "name": "envoy.filters.http.tap",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
            "common_config": {
                "static_config": {
                    "match": {"any_match": True},
                    "output_config": {
                        "max_buffered_rx_bytes": MAX_BUFFERED_BYTES,
                        "max_buffered_tx_bytes": MAX_BUFFERED_BYTES,
                        "sinks": [
                            {
                                "format": "PROTO_BINARY",
                                "file_per_tap": {"path_prefix": str(tap_dir / "tap")},
                            }
                        ],
                    },
                }
            },
        },
    }


#: What the chart asks of every request (trace.recordDownstreamConnection and
#: recordHeadersReceivedTime off).
CHART_ATTRIBUTES = ("xds.node.id", "xds.node.cluster", "xds.node.metadata.NAMESPACE")


@dataclass(frozen=True)
class ExtProcOptions:
    """One way of configuring the ext_proc tap; the defaults are the chart's rendering.

    The cost experiments (``experiments/extproc_cost/``) vary one field at a time."""

    attributes: tuple[str, ...] = CHART_ATTRIBUTES
    #: Extra static metadata, e.g. the namespace the chart could send instead of attributes.
    extra_metadata: tuple[tuple[str, str], ...] = ()
    request_body_mode: str = "STREAMED"
    response_body_mode: str = "STREAMED"
    trailer_mode: str = "SEND"
    deferred_close: str = DEFERRED_CLOSE
    send_body_without_waiting_for_header_response: bool | None = None
    #: Envoy's Google gRPC client instead of its own (envoy_grpc).
    google_grpc: bool = False
    #: HTTP/2 keepalive on the side-stream cluster (the chart's patch).
    keepalive: bool = True
    #: The side-stream cluster's http2_protocol_options.max_concurrent_streams (None: Envoy's
    #: default, unlimited): past it Envoy opens another connection.
    cluster_max_concurrent_streams: int | None = None


def ext_proc_filter(
    options: ExtProcOptions = ExtProcOptions(), cluster: str = "emulator", port: int = 0
) -> Json:
    """The filter as the chart renders it (with `options`' changes), buffered traces."""
    metadata = {
        "x-tap-id": TAP_ID,
        "x-tap-streaming": "false",
        "x-tap-max-buffered-rx-bytes": str(MAX_BUFFERED_BYTES),
        "x-tap-max-buffered-tx-bytes": str(MAX_BUFFERED_BYTES),
        "x-tap-record-headers-received-time": "false",
        "x-tap-record-downstream-connection": "false",
        **dict(options.extra_metadata),
    }
    service: Json = {"initial_metadata": [{"key": k, "value": v} for k, v in metadata.items()]}
    if options.google_grpc:
        service["google_grpc"] = {"target_uri": f"127.0.0.1:{port}", "stat_prefix": cluster}
    else:
        service["envoy_grpc"] = {"cluster_name": cluster}
    config: Json = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": service,
        "observability_mode": True,
        "failure_mode_allow": True,
        "deferred_close_timeout": options.deferred_close,
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SEND",
            "request_body_mode": options.request_body_mode,
            "response_body_mode": options.response_body_mode,
            "request_trailer_mode": options.trailer_mode,
            "response_trailer_mode": options.trailer_mode,
        },
    }
    if options.attributes:
        config["request_attributes"] = list(options.attributes)
    if options.send_body_without_waiting_for_header_response is not None:
        config["send_body_without_waiting_for_header_response"] = (
            options.send_body_without_waiting_for_header_response
        )
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def ext_proc_cluster(name: str, port: int, options: ExtProcOptions = ExtProcOptions()) -> Json:
    """The side streams' cluster, as Istio generates it plus the chart's keepalive patch."""
    http2: Json = {}
    if options.keepalive:
        http2["connection_keepalive"] = {"interval": "10s", "timeout": "5s"}
    if options.cluster_max_concurrent_streams is not None:
        http2["max_concurrent_streams"] = options.cluster_max_concurrent_streams
    return _static_cluster(name, port, http2_options=http2)


def zipkin_tracing(sampling_percent: float) -> Json:
    """The HCM tracer as Istio configures it (Zipkin, 1% sampling by default)."""
    return {
        "random_sampling": {"value": sampling_percent},
        "provider": {
            "name": "envoy.tracers.zipkin",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig",
                "collector_cluster": ZIPKIN_CLUSTER,
                "collector_endpoint": "/api/v2/spans",
                "collector_endpoint_version": "HTTP_JSON",
                "shared_span_context": False,
                "trace_id_128bit": True,
            },
        },
    }


@dataclass(frozen=True)
class Arm:
    """One listener of the Envoy under test: its filter, its tracer, its side-stream cluster."""

    name: str
    kind: str  # "notap", "tap" or "extproc"
    options: ExtProcOptions = ExtProcOptions()
    server_port: int = 0  # the ext_proc server (kind "extproc")
    tracing_percent: float | None = None  # None: no tracer on the listener

    @property
    def cluster(self) -> str:
        return f"xp-{self.name}"


def arms_bootstrap(upstream_port: int, tap_dir: Path, arms: list[Arm]) -> Json:
    """The Envoy under test with one listener per arm; each ext_proc arm has its own cluster
    (so its side streams' stats are its own)."""
    route_config = _upstream_route()
    listeners, clusters = [], [_static_cluster("upstream", upstream_port)]
    for arm in arms:
        filters: list[Json] = []
        if arm.kind == "tap":
            filters = [tap_filter(tap_dir)]
        elif arm.kind == "extproc":
            filters = [ext_proc_filter(arm.options, arm.cluster, arm.server_port)]
            clusters.append(ext_proc_cluster(arm.cluster, arm.server_port, arm.options))
        listener = _listener(arm.name, route_config, filters)
        if arm.tracing_percent is not None:
            manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
            manager["tracing"] = zipkin_tracing(arm.tracing_percent)
        listeners.append(listener)
    if any(arm.tracing_percent is not None for arm in arms):
        clusters.append(_static_cluster(ZIPKIN_CLUSTER, upstream_port))
    return {
        "node": {
            "id": NODE_ID,
            "cluster": NODE_CLUSTER,
            "metadata": {"NAMESPACE": NAMESPACE},
        },
        "admin": _admin(),
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }


def _upstream_route() -> Json:
    return {
        "name": "to-upstream",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            }
        ],
    }


def front_bootstrap(upstream_port: int, emulator_port: int, tap_dir: Path) -> Json:
    """The Envoy under test: three listeners (see the module docstring), two clusters."""
    route_config = _upstream_route()
    filters = {"notap": [], "tap": [tap_filter(tap_dir)], "extproc": [ext_proc_filter()]}
    return {
        "node": {
            "id": NODE_ID,
            "cluster": NODE_CLUSTER,
            "metadata": {"NAMESPACE": NAMESPACE},
        },
        "admin": _admin(),
        "static_resources": {
            "listeners": [_listener(arm, route_config, filters[arm]) for arm in ARMS],
            "clusters": [
                _static_cluster("upstream", upstream_port),
                ext_proc_cluster("emulator", emulator_port),
            ],
        },
    }


def upstream_bootstrap(answers_socket: Path) -> Json:
    """The fast upstream: buffer the request, then answer from a route.

    GET and POST are answered by ``direct_response`` on the listener itself. A gRPC call goes
    through Envoy's gRPC/HTTP1 reverse bridge to a second listener on a Unix socket that
    answers with a plain protobuf body; the bridge frames it and adds the ``grpc-status``
    trailer, so the tapped proxy sees a real unary call (headers, message, trailers) rather
    than the trailers-only answer ``direct_response`` gives a gRPC request.
    """
    routes = [
        {"match": {"prefix": GRPC_PREFIX}, "route": {"cluster": "answers"}},
        {
            "match": {"prefix": "/post"},
            "direct_response": {"status": 200, "body": {"inline_string": POST_ANSWER}},
        },
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "x" * GET_BODY_BYTES}},
        },
    ]
    bridge = {
        "name": "envoy.filters.http.grpc_http1_reverse_bridge",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.grpc_http1_reverse_bridge.v3.FilterConfig",
            "content_type": PROTOBUF_CONTENT_TYPE,
            "withhold_grpc_frames": True,
        },
    }
    buffer = {
        "name": "envoy.filters.http.buffer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
            "max_request_bytes": MAX_BUFFERED_BYTES,
        },
    }
    grpc_answer = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": 200,
            "body": {"inline_bytes": base64.b64encode(GRPC_ANSWER).decode()},
        },
        "response_headers_to_add": [
            {
                "header": {"key": "content-type", "value": PROTOBUF_CONTENT_TYPE},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ],
    }
    front = _listener("upstream", _routes("answers", routes), [bridge, buffer])
    answers = _listener("answers", _routes("grpc-answer", [grpc_answer]), [])
    answers["address"] = {"pipe": {"path": str(answers_socket)}}
    cluster: Json = {
        "name": "answers",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "answers",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"pipe": {"path": str(answers_socket)}}}}
                    ]
                }
            ],
        },
    }
    return {
        "node": {"id": "bench-upstream", "cluster": "bench-upstream"},
        "admin": _admin(),
        "static_resources": {"listeners": [front, answers], "clusters": [cluster]},
    }


def _routes(name: str, routes: list[Json]) -> Json:
    return {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
