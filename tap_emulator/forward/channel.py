"""Forward, channel: the one gRPC connection to the tool, and the state it is in.

Every sender's stream shares one channel (one HTTP/2 connection). gRPC reconnects it by itself
with jittered exponential backoff, capped here at 5 s so that a tool that comes back is used
again within seconds; the channel never idles out, and is asked to connect at start, so that
its state says whether the tool is reachable before any trace needs it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc

from tap_emulator import __version__
from tap_emulator.labels import ForwardState
from tap_emulator.observe.logs import ThrottledLog

log = logging.getLogger(__name__)

_STATES = {
    grpc.ChannelConnectivity.IDLE: ForwardState.IDLE,
    grpc.ChannelConnectivity.CONNECTING: ForwardState.CONNECTING,
    grpc.ChannelConnectivity.READY: ForwardState.READY,
    grpc.ChannelConnectivity.TRANSIENT_FAILURE: ForwardState.TRANSIENT_FAILURE,
    grpc.ChannelConnectivity.SHUTDOWN: ForwardState.SHUTDOWN,
}

# Keepalive: a PING after 5 minutes without one. Servers built on gRPC (C++, Go, Java) refuse
# pings more often than that by default and end the connection (GOAWAY too_many_pings), and
# a StreamTaps server sends nothing on its streams before their end, so it never earns more.
_KEEPALIVE_MS = 300_000
_KEEPALIVE_TIMEOUT_MS = 20_000
_NEVER_IDLE_MS = 2**31 - 1


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.primary_user_agent", f"tap-emulator/{__version__}"),
        ("grpc.enable_retries", 0),  # a trace is never sent twice on our behalf
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.client_idle_timeout_ms", _NEVER_IDLE_MS),
        ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
    ]


def open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, max_message_bytes: int
) -> grpc.aio.Channel:
    options = channel_options(max_message_bytes)
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, credentials, options=options)


class ConnectionWatch:
    """Follows the channel's connectivity, and asks it to connect whenever it is idle."""

    def __init__(self, channel: grpc.aio.Channel, target: str) -> None:
        self._channel = channel
        self._target = target
        self.state = ForwardState.IDLE
        self.since = time.monotonic()
        self.ever_ready = False
        # gRPC retries a connection every few seconds while the tool is away: say so once a
        # minute, not on every attempt.
        self._warnings = ThrottledLog(log, period_seconds=60.0)

    async def run(self, changed: Any) -> None:
        """Until cancelled; `changed(state)` is called on every change."""
        current = self._channel.get_state(try_to_connect=True)
        while True:
            self._note(_STATES[current], changed)
            if current is grpc.ChannelConnectivity.SHUTDOWN:
                return
            await self._channel.wait_for_state_change(current)
            current = self._channel.get_state(try_to_connect=True)

    def _note(self, state: ForwardState, changed: Any) -> None:
        if state is self.state:
            return
        before, self.state, self.since = self.state, state, time.monotonic()
        if state is ForwardState.READY:
            log.info("forward_to %s: connected", self._target)
            self.ever_ready = True
        elif state is ForwardState.TRANSIENT_FAILURE:
            self._warnings.warning(
                "unreachable",
                "forward_to %s: unreachable (was %s); traces queue up to the forward queue's "
                "bound meanwhile, then give way",
                self._target,
                before.value,
            )
        changed(state)
