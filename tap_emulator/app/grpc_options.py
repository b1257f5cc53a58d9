"""The gRPC server's transport options and TLS credentials, from the settings."""

from __future__ import annotations

from pathlib import Path

import grpc

from tap_emulator.config import ConfigError, Settings


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    """Transport options.

    - bdp_probe=0 keeps grpc from growing its receive windows without bound while a handler
      stops reading: this is what makes backpressure bound memory. A fixed 256 KiB stream
      window (lookahead_bytes) wins back the throughput that costs with large messages
      (docs/measurements/transport.md: 64 KiB messages 8.5k -> 11.9k msg/s).
    - The transport accepts messages up to twice max_message_bytes so that the handler sees,
      counts and refuses the ones just over the limit with a status that says why; beyond
      that the transport refuses them itself (RESOURCE_EXHAUSTED, not counted by us).
    - Each connection may open max_streams_per_connection streams (advertised in HTTP/2
      SETTINGS); fairness between clients is the stream registry's job (per source, per peer).
      There is deliberately no process-wide RPC cap in grpc itself: it would count health
      checks against the tap streams' slots.
    - Keepalive: the server pings a connection idle for 30 s and drops it if no answer comes
      within 10 s (a dead or frozen peer does not hold streams for minutes; grpc core enforces
      that deadline with its ping timeout, a minute by default, not keepalive_timeout_ms, so
      both are set); clients may ping at most every 5 s without data (the filter chart has
      Envoy ping every 10 s, to drop a frozen emulator), and two pings too many get GOAWAY
      (gRPC's ping strikes).
    """
    return [
        ("grpc.max_receive_message_length", 2 * settings.max_message_bytes),
        ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 256 * 1024),
        ("grpc.max_concurrent_streams", settings.max_streams_per_connection),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def read_setting_file(name: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path} ({exc.strerror})") from exc


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and with a client CA, mutual TLS) for the tap port; None means plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key = read_setting_file("tls_key_file", settings.tls_key_file)
    chain = read_setting_file("tls_cert_file", settings.tls_cert_file)
    client_ca = None
    if settings.tls_client_ca_file is not None:
        client_ca = read_setting_file("tls_client_ca_file", settings.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
