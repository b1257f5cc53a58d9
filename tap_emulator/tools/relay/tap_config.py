"""What the relay posts to Envoy's `POST /tap`: the tap filter's config id, which requests to
tap (a MatchPredicate) and how to print them."""

from __future__ import annotations

import json
from typing import Any

from tap_emulator.tools.relay.settings import RelaySettings


def match_predicate(settings: RelaySettings) -> dict[str, Any]:
    """--match-json as given, else the --match-header pairs (all must match), else
    everything."""
    if settings.match_json:
        predicate: dict[str, Any] = json.loads(settings.match_json)
        return predicate
    if not settings.match_header:
        return {"any_match": True}
    headers = []
    for pair in settings.match_header:
        name, _, value = pair.partition("=")
        headers.append({"name": name.strip().lower(), "string_match": {"exact": value}})
    return {"http_request_headers_match": {"headers": headers}}


def tap_request(settings: RelaySettings) -> bytes:
    """The body of `POST /tap`. Bodies are printed base64 (`JSON_BODY_AS_BYTES`), so binary
    bodies, gRPC frames included, survive JSON exactly."""
    output = {
        "sinks": [{"streaming_admin": {}, "format": "JSON_BODY_AS_BYTES"}],
        "streaming": settings.streamed,
        "max_buffered_rx_bytes": settings.max_buffered_rx_bytes,
        "max_buffered_tx_bytes": settings.max_buffered_tx_bytes,
    }
    body = {
        "config_id": settings.config_id,
        "tap_config": {"match": match_predicate(settings), "output_config": output},
    }
    return json.dumps(body).encode()
