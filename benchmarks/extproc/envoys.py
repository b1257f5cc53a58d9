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


def ext_proc_filter() -> Json:
    """The filter as the chart renders it with its defaults, buffered traces (one file each)."""
    metadata = {
        "x-tap-id": TAP_ID,
        "x-tap-streaming": "false",
        "x-tap-max-buffered-rx-bytes": str(MAX_BUFFERED_BYTES),
        "x-tap-max-buffered-tx-bytes": str(MAX_BUFFERED_BYTES),
        "x-tap-record-headers-received-time": "false",
        "x-tap-record-downstream-connection": "false",
    }
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/"
            "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {
                "envoy_grpc": {"cluster_name": "emulator"},
                "initial_metadata": [{"key": k, "value": v} for k, v in metadata.items()],
            },
            "observability_mode": True,
            "failure_mode_allow": True,
            "deferred_close_timeout": DEFERRED_CLOSE,
            "processing_mode": {
                "request_header_mode": "SEND",
                "response_header_mode": "SEND",
                "request_body_mode": "STREAMED",
                "response_body_mode": "STREAMED",
                "request_trailer_mode": "SEND",
                "response_trailer_mode": "SEND",
            },
            "request_attributes": [
                "xds.node.id",
                "xds.node.cluster",
                "xds.node.metadata.NAMESPACE",
            ],
        },
    }


def front_bootstrap(upstream_port: int, emulator_port: int, tap_dir: Path) -> Json:
    """The Envoy under test: three listeners (see the module docstring), two clusters."""
    route_config = {
        "name": "to-upstream",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
            }
        ],
    }
    filters = {"notap": [], "tap": [tap_filter(tap_dir)], "extproc": [ext_proc_filter()]}
    keepalive = {"connection_keepalive": {"interval": "10s", "timeout": "5s"}}
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
                _static_cluster("emulator", emulator_port, http2_options=keepalive),
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
