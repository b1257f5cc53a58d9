"""The relay's settings: one frozen table, each field with its default, unit and help, from
which its flags are generated (as `serve`'s are from `Settings`) and which validates itself
at construction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tap_emulator.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    Check,
    ConfigError,
    GiB,
    KiB,
    MiB,
    check_settings,
    in_range,
    one_of,
    required_setting,
    setting,
)
from tap_emulator.labels import Direction
from tap_emulator.netaddr import split_address
from tap_emulator.tools._envoy_admin import AdminAddress

ENDS = "Envoy and the emulator"
TAP = "tap configuration (posted to Envoy)"
LIMITS = "limits and behaviour"
LOGS = "logging"
# What one parsed JSON value costs in memory, about: measured here as 60 to 70 bytes each
# for `[]`, `{}` and short strings parsed by json and protobuf's json_format.
VALUE_COST_BYTES = 64


def _admin_url(name: str, value: Any) -> str:
    try:
        AdminAddress.parse(str(value))
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return str(value)


def _header_pairs(name: str, value: Any) -> tuple[str, ...]:
    pairs = (value,) if isinstance(value, str) else tuple(str(pair) for pair in value)
    for pair in pairs:
        header, sep, _ = pair.partition("=")
        if not sep or not header.strip():
            raise ConfigError(f"{name}: expects NAME=VALUE, got {pair!r}")
    return pairs


def _match_predicate(name: str, value: Any) -> str:
    try:
        predicate = json.loads(str(value)) if value else {}
    except ValueError as exc:
        raise ConfigError(f"{name}: is not JSON: {exc}") from None
    if not isinstance(predicate, dict):
        raise ConfigError(f"{name}: must be a JSON object (a MatchPredicate)")
    return str(value)


def _host_and_port(value: str) -> str | None:
    try:
        split_address(value)
    except ValueError as exc:
        # ipaddress's own reasons ("At least 3 parts expected") do not say what was read.
        return f"expected HOST:PORT or [IPv6]:PORT, got {value!r} ({exc})"
    return None


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything `tap-emulator relay` can be told."""

    envoy_admin: str = required_setting(
        "Envoy's admin endpoint, e.g. http://127.0.0.1:15000",
        metavar="URL",
        parse=_admin_url,
        group=ENDS,
    )
    to: str = required_setting(
        "the TapSinkService ([IPv6]:PORT works)", metavar="HOST:PORT", group=ENDS
    )
    config_id: str = setting(
        "tap-emulator", "the tap filter's admin_config.config_id", metavar="ID", group=ENDS
    )
    direction: Direction = setting(
        Direction.INBOUND,
        "tap_id becomes tap-emulator-relay-<direction>, which decides the file names",
        choices=tuple(direction.value for direction in Direction),
        metavar=None,
        group=ENDS,
    )
    streamed: bool = setting(
        False,
        "buffered or streamed traces",
        switch={
            "--buffered": (False, "one trace per transaction, sent when it ends"),
            "--streamed": (True, "one segment per headers, body chunk or trailers, as they happen"),
        },
        group=TAP,
    )
    match_header: tuple[str, ...] = setting(
        (),
        "tap only requests with this header value (repeatable: all must match)",
        repeatable=True,
        metavar="NAME=VALUE",
        shown="tap everything",
        parse=_header_pairs,
        group=TAP,
    )
    match_json: str = setting(
        "",
        "a full envoy.config.tap.v3.MatchPredicate as JSON (replaces --match-header)",
        metavar="JSON",
        shown="none",
        parse=_match_predicate,
        group=TAP,
    )
    max_buffered_rx_bytes: int = setting(
        MiB, "request body bytes Envoy keeps per trace (streamed: per chunk)", size=True, group=TAP
    )
    max_buffered_tx_bytes: int = setting(
        MiB, "response body bytes Envoy keeps per trace (streamed: per chunk)", size=True, group=TAP
    )
    queue_max_items: int = setting(10_000, "traces queued for the emulator", group=LIMITS)
    queue_max_bytes: int = setting(
        64 * MiB,
        "bytes of traces queued for the emulator; a full queue stops reading from Envoy",
        size=True,
        group=LIMITS,
    )
    # Protobuf is smaller than its JSON, so every trace under this fits the emulator's
    # default max_message_bytes (16 MiB).
    max_trace_bytes: int = setting(
        16 * MiB,
        f"heaviest JSON trace taken from Envoy: its length plus {VALUE_COST_BYTES} bytes per "
        "JSON value in it (about what parsing costs); a heavier one is skipped as soon as it "
        "is, and counted",
        size=True,
        group=LIMITS,
    )
    max_traces: int = setting(0, "stop after N traces (0: never)", metavar="N", group=LIMITS)
    backoff_initial_seconds: float = setting(0.5, "first reconnect delay", group=LIMITS)
    backoff_max_seconds: float = setting(10.0, "longest reconnect delay", group=LIMITS)
    drain_timeout_seconds: float = setting(
        30.0, "on stop, how long to keep trying to forward what was read", group=LIMITS
    )
    log_level: str = setting(
        "info", "debug, info, warning or error", choices=LOG_LEVELS, group=LOGS
    )
    log_format: str = setting(
        "text", "text or json (one object per line)", choices=LOG_FORMATS, group=LOGS
    )

    def __post_init__(self) -> None:
        check_settings(self, _CHECKS)

    @property
    def admin(self) -> AdminAddress:
        return AdminAddress.parse(self.envoy_admin)

    @property
    def tap_id(self) -> str:
        return f"tap-emulator-relay-{self.direction.value}"

    @property
    def mode(self) -> str:
        return "streamed" if self.streamed else "buffered"


_CHECKS: dict[str, Check] = {
    "to": _host_and_port,
    "config_id": lambda value: None if value else "must not be empty",
    "max_buffered_rx_bytes": in_range(1, 2**32 - 1),  # Envoy's field is a UInt32Value
    "max_buffered_tx_bytes": in_range(1, 2**32 - 1),
    "queue_max_items": in_range(1, 10_000_000),
    "queue_max_bytes": in_range(1, 64 * GiB),
    "max_trace_bytes": in_range(64 * KiB, 2 * GiB),
    "max_traces": in_range(0, 2**62),
    "backoff_initial_seconds": in_range(0.001, 3600),
    "backoff_max_seconds": in_range(0.001, 3600),
    "drain_timeout_seconds": in_range(0, 3600),
    "log_level": one_of(*LOG_LEVELS),
    "log_format": one_of(*LOG_FORMATS),
}
