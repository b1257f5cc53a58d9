"""The real server in this process (tap_emulator.testing), driven over loopback gRPC with our
own generated messages: the sources' statuses, health, readiness and the lifecycle."""

from __future__ import annotations

import asyncio
import errno
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tap_emulator import app
from tap_emulator._proto.envoy.service.tap.v3.tap_pb2 import StreamTapsRequest
from tap_emulator.app import StartupError
from tap_emulator.config import Settings
from tap_emulator.labels import Source
from tap_emulator.testing import FaultyPublisher, InProcessEmulator, SlowPublisher
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.policy import WriteErrorPolicy

STREAM_TAPS = "/envoy.service.tap.v3.TapSinkService/StreamTaps"
TAP_SERVICE = "envoy.service.tap.v3.TapSinkService"


def trace(authority: str, trace_id: str, *, tap_id: str = "f5-tap-x-inbound") -> bytes:
    request = StreamTapsRequest()
    request.identifier.tap_id = tap_id
    headers = request.trace.http_buffered_trace.request.headers
    headers.add(key=":authority", value=authority)
    headers.add(key="x-b3-traceid", value=trace_id)
    return request.SerializeToString()


async def send(target: str, messages: Sequence[bytes]) -> tuple[grpc.StatusCode, str]:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_unary(STREAM_TAPS)(iter(messages))
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return grpc.StatusCode.OK, ""


def settings(out: Path, **overrides: object) -> Settings:
    return Settings(output_dir=out, metrics_listen="", **overrides)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_buffered_trace_becomes_its_file_and_the_stream_is_answered_ok(
    tmp_path: Path,
) -> None:
    async with InProcessEmulator(settings(tmp_path)) as served:
        code, _ = await send(served.tap_target, [trace("Svc.NS:80", "a" * 32)])
        assert code is grpc.StatusCode.OK
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"svc.ns:80-{'a' * 32}-1.pb"]


@pytest.mark.asyncio
async def test_a_malformed_message_ends_its_stream_after_what_came_before(tmp_path: Path) -> None:
    async with InProcessEmulator(settings(tmp_path)) as served:
        code, details = await send(served.tap_target, [trace("ok.ns:80", "b" * 32), b"\xff\xff"])
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "message 2 on this stream" in details and "the 1 before it" in details
    assert [p.name for p in tmp_path.iterdir()] == [f"ok.ns:80-{'b' * 32}-1.pb"]


@pytest.mark.asyncio
async def test_a_message_over_the_limit_is_refused_with_its_size(tmp_path: Path) -> None:
    big = StreamTapsRequest()
    big.trace.http_buffered_trace.request.body.as_bytes = bytes(3000)  # under the transport's 2x
    async with InProcessEmulator(settings(tmp_path, max_message_bytes=2048)) as served:
        code, details = await send(served.tap_target, [big.SerializeToString()])
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over max_message_bytes (2048)" in details


@pytest.mark.asyncio
async def test_a_message_with_too_many_headers_is_refused_before_it_is_decoded(
    tmp_path: Path,
) -> None:
    many = StreamTapsRequest()
    headers = many.trace.http_buffered_trace.request.headers
    for n in range(20_000):
        headers.add(key="x", value=str(n))
    async with InProcessEmulator(settings(tmp_path, max_headers_per_message=1000)) as served:
        code, details = await send(served.tap_target, [many.SerializeToString()])
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "more than 1000 repeated elements" in details


@pytest.mark.asyncio
async def test_an_over_long_tap_id_is_refused(tmp_path: Path) -> None:
    async with InProcessEmulator(settings(tmp_path)) as served:
        code, details = await send(served.tap_target, [trace("a", "c" * 32, tap_id="-" * 10_000)])
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "tap_id is 10000 characters" in details


@pytest.mark.asyncio
async def test_a_peer_over_its_share_is_refused_and_health_still_answers(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def held(target: str) -> grpc.StatusCode:
        async def messages():  # type: ignore[no-untyped-def]
            yield trace("held.ns:80", "d" * 32)
            await gate.wait()

        async with grpc.aio.insecure_channel(target) as channel:
            try:
                await channel.stream_unary(STREAM_TAPS)(messages())
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    async with InProcessEmulator(settings(tmp_path, max_streams_per_peer=2)) as served:
        holders = [asyncio.create_task(held(served.tap_target)) for _ in range(2)]
        registry = served.emulator.registry
        for _ in range(200):
            if registry.open_streams(Source.TAP) == 2:
                break
            await asyncio.sleep(0.01)
        code, details = await send(served.tap_target, [trace("extra.ns:80", "e" * 32)])
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "peer limit" in details
        async with grpc.aio.insecure_channel(served.tap_target) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            answer = await check(health_pb2.HealthCheckRequest(service=TAP_SERVICE))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        gate.set()
        assert await asyncio.gather(*holders) == [grpc.StatusCode.OK] * 2


@pytest.mark.asyncio
async def test_the_drain_ends_streams_unavailable_and_writes_what_was_accepted(
    tmp_path: Path,
) -> None:
    gate = asyncio.Event()

    async def messages():  # type: ignore[no-untyped-def]
        yield trace("drain.ns:80", "f" * 32)
        await gate.wait()

    served = InProcessEmulator(settings(tmp_path))
    async with served:
        async with grpc.aio.insecure_channel(served.tap_target) as channel:
            call = channel.stream_unary(STREAM_TAPS)(messages())
            for _ in range(200):
                if served.emulator.sink.accepted == 1:
                    break
                await asyncio.sleep(0.01)
            assert await served.stop() == 0
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await call
        gate.set()
    assert ended.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "every message read before this was accepted" in (ended.value.details() or "")
    assert [p.name for p in tmp_path.iterdir()] == [f"drain.ns:80-{'f' * 32}-1.pb"]


@pytest.mark.asyncio
async def test_a_drain_that_cannot_finish_says_how_many_files_were_not_written(
    tmp_path: Path,
) -> None:
    stalled = threading.Event()
    disk = DirectoryPublisher(tmp_path)
    served = InProcessEmulator(
        settings(tmp_path, drain_timeout_seconds=0.5), SlowPublisher(disk, gate=stalled)
    )
    async with served:
        async with grpc.aio.insecure_channel(served.tap_target) as channel:
            call = channel.stream_unary(STREAM_TAPS)(iter([trace("stuck.ns:80", "1" * 32)]))
            for _ in range(200):
                if served.emulator.unpublished == 1:
                    break
                await asyncio.sleep(0.01)
            assert await served.stop() == 1
            call.cancel()
        stalled.set()


@pytest.mark.asyncio
async def test_a_port_in_use_is_one_clear_error(tmp_path: Path) -> None:
    async with InProcessEmulator(settings(tmp_path)) as first:
        taken = first.tap_target
        taken_settings = Settings(output_dir=tmp_path / "b", metrics_listen="", listen=taken)
        with pytest.raises(StartupError, match=r"already in use \(listen\)"):
            await app.start(app.build(taken_settings))


async def http_get(url: str) -> tuple[int, str]:
    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as refused:
            with refused:
                return refused.code, refused.read().decode()

    return await asyncio.to_thread(get)


@pytest.mark.asyncio
async def test_liveness_and_readiness_say_what_the_server_can_do(tmp_path: Path) -> None:
    """/healthz answers while the process runs; /readyz is 200 while a tap stream can be
    accepted, 503 with the reason while every slot is taken or the writers cannot publish."""
    full = threading.Event()
    disk = FaultyPublisher(
        DirectoryPublisher(tmp_path),
        fault=lambda *_: (
            OSError(errno.ENOSPC, "No space left on device") if full.is_set() else None
        ),
    )
    gate = asyncio.Event()

    async def held() -> None:
        async def messages():  # type: ignore[no-untyped-def]
            yield trace("held.ns:80", "9" * 32)
            await gate.wait()

        async with grpc.aio.insecure_channel(served.tap_target) as channel:
            await channel.stream_unary(STREAM_TAPS)(messages())

    options = settings(tmp_path, max_concurrent_streams=1, on_write_error=WriteErrorPolicy.DROP)
    served = InProcessEmulator(replace(options, metrics_listen="127.0.0.1:0"), disk)
    async with served:
        assert await http_get(f"{served.metrics_url}/healthz") == (200, "ok\n")
        assert (await http_get(f"{served.metrics_url}/readyz"))[0] == 200

        holder = asyncio.create_task(held())
        for _ in range(200):
            if served.emulator.registry.open_streams(Source.TAP) == 1:
                break
            await asyncio.sleep(0.01)
        status, reason = await http_get(f"{served.metrics_url}/readyz")
        assert (status, "stream slots are taken" in reason) == (503, True), reason
        assert (await http_get(f"{served.metrics_url}/healthz"))[0] == 200
        gate.set()
        await holder

        full.set()
        await send(served.tap_target, [trace("full.ns:80", "8" * 32)])
        for _ in range(200):
            status, reason = await http_get(f"{served.metrics_url}/readyz")
            if status == 503:
                break
            await asyncio.sleep(0.01)
        print(f"observed: /readyz {status} {reason.strip()!r}")
        assert status == 503 and "cannot publish" in reason
        assert (await http_get(f"{served.metrics_url}/healthz"))[0] == 200
