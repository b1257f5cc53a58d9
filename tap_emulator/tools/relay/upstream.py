"""One StreamTaps call from the relay to the emulator, with a watch on the emulator's gRPC
health: a NOT_SERVING answer (a drain, before a restart) sets `draining`, so the sender can
half-close the call and have everything it wrote accepted."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tap_emulator.tools._tap_client import (
    Outcome,
    TapCall,
    encode_request,
    open_channel,
    outcome_of,
)
from tap_emulator.tools.relay.queue import Item

HEALTH_TIMEOUT_SECONDS = 5.0
_SERVING = health_pb2.HealthCheckResponse.SERVING


class Upstream:
    """One channel and StreamTaps call to the emulator; the first message written carries
    the identifier."""

    def __init__(self, target: str, identifier: bytes) -> None:
        self.target = target
        self.identifier = identifier
        self.draining = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._call: TapCall | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def written(self) -> int:
        return self._call.written if self._call is not None else 0

    async def open(self) -> None:
        """Connect, check the emulator is ready, open the call; raises ConnectionError."""
        self._channel = open_channel(self.target)
        health = health_pb2_grpc.HealthStub(self._channel)
        try:
            answer = await health.Check(
                health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_SECONDS
            )
            if answer.status != _SERVING:
                raise ConnectionError("the emulator is not ready (health: NOT_SERVING)")
        except grpc.aio.AioRpcError as exc:
            # A TapSinkService without the health service is served all the same.
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise ConnectionError(f"{exc.code().name}: {exc.details()}") from exc
        self._call = TapCall(self._channel)
        self._watch = asyncio.create_task(self._watch_health(health))

    async def _watch_health(self, health: Any) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for answer in health.Watch(health_pb2.HealthCheckRequest(service="")):
                if answer.status != _SERVING:
                    self.draining.set()
                    return

    async def write(self, item: Item) -> None:
        assert self._call is not None
        first = self._call.written == 0
        await self._call.write(
            encode_request(item.trace, item.trace_id, self.identifier if first else b"")
        )

    async def finish(self) -> Outcome:
        """Half-close, wait for the emulator's answer (OK: all on disk), close."""
        outcome = Outcome("OK", "") if self._call is None else await self._call.finish()
        await self.close()
        return outcome

    async def failure(self, error: BaseException) -> Outcome:
        """Why the call failed, once it has; then close everything."""
        outcome = outcome_of(error)
        if self._call is not None and outcome.code == "UNKNOWN" and self._call.done():
            with contextlib.suppress(asyncio.CancelledError):
                outcome = await self._call.ended()
        await self.close()
        return outcome

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._call is not None and not self._call.done():
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
