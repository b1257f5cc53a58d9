"""An ExternalProcessor client that plays a Process stream as Envoy's ext_proc filter does:
gRPC metadata first, then ProcessingRequests as raw bytes (no protobuf classes of its own)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


@dataclass(frozen=True)
class Played:
    code: grpc.StatusCode
    details: str


async def play(
    target: str,
    messages: Sequence[bytes],
    metadata: Sequence[tuple[str, str | bytes]],
    *,
    channel: grpc.aio.Channel | None = None,
) -> Played:
    """Send one stream and wait for its end; the server may end it before the last write."""
    own = channel is None
    channel = channel or grpc.aio.insecure_channel(target)
    try:
        call = channel.stream_stream(PROCESS)(metadata=tuple(metadata))
        for message in messages:
            try:
                await call.write(message)
            except grpc.aio.AioRpcError:
                break
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call.done_writing()
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return Played(error.code(), error.details() or "")
    finally:
        if own:
            await channel.close()
    return Played(await call.code(), await call.details())


def with_metadata(
    metadata: Sequence[tuple[str, str | bytes]], **overrides: str
) -> list[tuple[str, str | bytes]]:
    """The metadata with some `x-tap-*` keys replaced (`x_tap_streaming="true"`)."""
    keys = {name.replace("_", "-"): value for name, value in overrides.items()}
    kept = [(key, value) for key, value in metadata if key not in keys]
    return kept + list(keys.items())
