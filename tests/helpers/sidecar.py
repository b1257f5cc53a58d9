"""A stand-in for the emulator's own Istio sidecar, and the capturing proxy's way to it.

In a namespace labelled for injection, the side streams of every capturing proxy reach the
emulator through the sidecar in the emulator's pod: the capturing proxy's cluster
`outbound|9000||tap-emulator...` speaks mutual TLS to that sidecar's inbound listener (Istio's
auto mTLS: the endpoint carries `tlsMode: istio`), which ends TLS in an HTTP connection manager
and forwards the gRPC streams over HTTP/2 to the emulator on the pod's loopback
(`inbound|9000||`). This module builds both ends for a real Envoy, with the settings Istio gives
them where they matter here:

- the sidecar's inbound connection manager: codec AUTO, `http2_protocol_options` empty,
  `stream_idle_timeout` 0 (Istio turns it off on every connection manager), a route to
  `inbound|9000||` with no timeout and no maximum stream duration, Envoy's default buffer
  limits (1 MiB per connection);
- `inbound|9000||`: static, HTTP/2, circuit breakers as Istio sets them (4294967295), no HTTP/2
  keepalive (destination rules do not reach inbound clusters); `inbound_keepalive` adds one,
  as an EnvoyFilter on the emulator's pod would;
- the capturing side: the rendered chart's cluster unchanged but for its endpoint, which now
  carries `tlsMode: istio` and points at the sidecar, and the two transport socket matches
  Istio adds for auto mTLS (TLS for `tlsMode: istio`, plaintext otherwise).

Certificates come from `trustme`: one CA, a certificate for each end. Istio's carry SPIFFE
URIs; trustme issues DNS names, so each end checks the other's DNS name instead (the same
checks, on another kind of name).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.helpers.chart_bootstrap import (
    HCM,
    LOOPBACK,
    ROUTER,
    analysis_cluster_name,
    istio_cluster,
)

Obj = dict[str, Any]

EMULATOR_IDENTITY = "tap-emulator.analysis-emulator.svc.cluster.local"
CLIENT_IDENTITY = "client.demo-ns.svc.cluster.local"
INBOUND_CLUSTER = "inbound|9000||"
SIDECAR_LISTENER = "virtualInbound"
TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_TYPES = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"


@dataclass(frozen=True)
class MeshCertificates:
    """PEM files: the mesh's CA, the emulator sidecar's certificate, the capturing proxy's."""

    ca: Path
    server_chain: Path
    server_key: Path
    client_chain: Path
    client_key: Path


def mesh_certificates(directory: Path) -> MeshCertificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(EMULATOR_IDENTITY)
    client = ca.issue_cert(CLIENT_IDENTITY)
    files = MeshCertificates(
        ca=directory / "ca.pem",
        server_chain=directory / "server-chain.pem",
        server_key=directory / "server-key.pem",
        client_chain=directory / "client-chain.pem",
        client_key=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.private_key_pem.write_to_path(str(files.client_key))
    files.server_chain.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    files.client_chain.write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    return files


def _common_tls(chain: Path, key: Path, ca: Path, peer: str, alpn: list[str]) -> Obj:
    return {
        "alpn_protocols": alpn,
        "tls_certificates": [
            {"certificate_chain": {"filename": str(chain)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": {
            "trusted_ca": {"filename": str(ca)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": peer}}],
        },
    }


def emulator_sidecar_bootstrap(
    emulator: tuple[str, int],
    certificates: MeshCertificates,
    *,
    inbound_keepalive: Obj | None = None,
) -> Obj:
    """The sidecar in the emulator's pod: mutual TLS in on port 0, HTTP/2 out to `emulator`.
    `inbound_keepalive` (a `connection_keepalive`) pings the emulator from the sidecar."""
    downstream_tls = {
        "@type": f"{TLS_TYPES}.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": _common_tls(
            certificates.server_chain,
            certificates.server_key,
            certificates.ca,
            CLIENT_IDENTITY,
            ["h2", "http/1.1"],
        ),
    }
    route = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": INBOUND_CLUSTER,
            "timeout": "0s",
            "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        },
    }
    connection_manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network"
        ".http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "inbound_0.0.0.0_9000",
        "codec_type": "AUTO",
        "stream_idle_timeout": "0s",
        "http2_protocol_options": {},
        "route_config": {
            "name": "inbound|9000||",
            "virtual_hosts": [{"name": "inbound|http|9000", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [
            {
                "name": ROUTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": SIDECAR_LISTENER,
        "traffic_direction": "INBOUND",
        "address": {"socket_address": {"address": LOOPBACK, "port_value": 0}},
        "filter_chains": [
            {
                "filters": [{"name": HCM, "typed_config": connection_manager}],
                "transport_socket": {"name": TLS_SOCKET, "typed_config": downstream_tls},
            }
        ],
    }
    cluster = istio_cluster(INBOUND_CLUSTER, *emulator)
    if inbound_keepalive is not None:
        options = cluster["typed_extension_protocol_options"]
        for protocol_options in options.values():
            http2 = protocol_options["explicit_http_config"]["http2_protocol_options"]
            http2["connection_keepalive"] = copy.deepcopy(inbound_keepalive)
    return {
        "node": {"id": "sidecar~10.0.0.42~tap-emulator-0.analysis-emulator", "cluster": "emu"},
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def through_sidecar(
    client_bootstrap: Obj, sidecar: tuple[str, int], certificates: MeshCertificates
) -> Obj:
    """`client_bootstrap` (from chart_bootstrap) with its analysis cluster sent, with Istio's
    auto mTLS, to the emulator's sidecar at `sidecar`."""
    bootstrap = copy.deepcopy(client_bootstrap)
    clusters = bootstrap["static_resources"]["clusters"]
    name = analysis_cluster_name(bootstrap["static_resources"]["listeners"])
    assert name, "the bootstrap's listeners send to no analysis cluster"
    (cluster,) = [c for c in clusters if c["name"] == name]
    (locality,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    endpoint["endpoint"]["address"]["socket_address"] = {
        "address": sidecar[0],
        "port_value": sidecar[1],
    }
    endpoint["metadata"] = {"filter_metadata": {TRANSPORT_SOCKET_MATCH: {"tlsMode": "istio"}}}
    fqdn = name.split("||", 1)[1]
    port = name.split("|")[1]
    upstream_tls = {
        "@type": f"{TLS_TYPES}.UpstreamTlsContext",
        "sni": f"outbound_.{port}_._.{fqdn}",
        "common_tls_context": _common_tls(
            certificates.client_chain,
            certificates.client_key,
            certificates.ca,
            EMULATOR_IDENTITY,
            ["istio-peer-exchange", "istio", "h2"],
        ),
    }
    cluster["transport_socket_matches"] = [
        {
            "name": "tlsMode-istio",
            "match": {"tlsMode": "istio"},
            "transport_socket": {"name": TLS_SOCKET, "typed_config": upstream_tls},
        },
        {
            "name": "tlsMode-disabled",
            "match": {},
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets"
                    ".raw_buffer.v3.RawBuffer"
                },
            },
        },
    ]
    return bootstrap
