"""The writer pool over injected publishers: what each kind of failure does, and what not."""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tap_emulator.observe.metrics import Metrics
from tap_emulator.testing import FaultyPublisher, SlowPublisher
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.numbering import Numbering
from tap_emulator.write.policy import WriteErrorPolicy, WriterMode
from tap_emulator.write.pool import WriterOptions, WriterPool
from tap_emulator.write.publisher import Publisher
from tap_emulator.write.queue import Publication, WriteQueue
from tap_emulator.write.retention import RetentionLedger, RetentionPolicy

FAST_RETRY = {"retry_initial_seconds": 0.01, "retry_max_seconds": 0.02}


def disk(directory: Path) -> DirectoryPublisher:
    publisher = DirectoryPublisher(directory)
    publisher.open()
    return publisher


def make_pool(
    publisher: Publisher,
    *,
    ledger: RetentionLedger | None = None,
    max_items: int = 10_000,
    **options: object,
) -> WriterPool:
    queue = WriteQueue(max_items, 1 << 26)
    numbering = Numbering(publisher.exists, ledger, 1000, 60)
    return WriterPool(
        queue,
        publisher,
        numbering,
        Metrics(),
        WriterOptions(**options),
        ledger,  # type: ignore[arg-type]
    )


def sample(pool: WriterPool, name: str, **labels: str) -> float:
    return pool._metrics.registry.get_sample_value(name, labels) or 0.0


async def publish(pool: WriterPool, publications: list[Publication], within: float = 10) -> int:
    await pool.start()
    try:
        for publication in publications:
            await pool.queue.put([publication])
        return await pool.drain(within)
    finally:
        await pool.close()


def settled_into(outcomes: list[bool]) -> Callable[[bool], None]:
    return outcomes.append


@pytest.mark.asyncio
async def test_every_file_is_published_and_settled_once(tmp_path: Path) -> None:
    outcomes: list[bool] = []
    pool = make_pool(disk(tmp_path))
    files = [Publication("s", n, b"x", settled=outcomes.append) for n in range(1, 101)]
    assert await publish(pool, files) == 0
    assert outcomes == [True] * 100
    assert len(list(tmp_path.iterdir())) == 100


@pytest.mark.asyncio
async def test_a_disk_wide_error_holds_the_files_until_it_clears(tmp_path: Path) -> None:
    full = threading.Event()
    full.set()

    def fault(stem: str, sequence: int, payload: bytes) -> OSError | None:
        return OSError(errno.ENOSPC, "No space left on device") if full.is_set() else None

    pool = make_pool(FaultyPublisher(disk(tmp_path), fault), **FAST_RETRY)
    await pool.start()
    for n in range(1, 21):
        await pool.queue.put([Publication("s", n, b"x")])
    for _ in range(200):
        if pool.failing is not None:
            break
        await asyncio.sleep(0.01)
    assert pool.problem() is not None and "enospc" in pool.problem()  # type: ignore[operator]
    assert pool.queue.unpublished == 20
    full.clear()
    assert await pool.drain(10) == 0
    await pool.close()
    assert pool.problem() is None
    assert sample(pool, "tap_emulator_write_errors_total", reason="enospc") >= 1
    assert len(list(tmp_path.iterdir())) == 20


@pytest.mark.asyncio
async def test_one_file_the_disk_refuses_for_its_own_sake_does_not_block_the_rest(
    tmp_path: Path,
) -> None:
    """EFBIG (over RLIMIT_FSIZE) for one big file: that file is dropped, the 25 after it land."""

    def fault(stem: str, sequence: int, payload: bytes) -> OSError | None:
        return OSError(errno.EFBIG, "File too large") if len(payload) > 1000 else None

    outcomes: list[bool] = []
    pool = make_pool(FaultyPublisher(disk(tmp_path), fault), on_error=WriteErrorPolicy.BLOCK)
    files = [Publication("big", 1, bytes(5000), settled=outcomes.append)]
    files += [Publication("small", n, b"x", settled=outcomes.append) for n in range(1, 26)]
    assert await publish(pool, files) == 0
    assert outcomes == [False] + [True] * 25
    assert sample(pool, "tap_emulator_files_dropped_total", reason="efbig") == 1
    assert pool.problem() is None
    assert sorted(p.name for p in tmp_path.iterdir())[0] == "small-1.pb"


@pytest.mark.asyncio
async def test_drop_policy_gives_up_each_failing_file_and_goes_on(tmp_path: Path) -> None:
    failures = iter([True, False, True, False])

    def fault(stem: str, sequence: int, payload: bytes) -> OSError | None:
        return OSError(errno.EIO, "I/O error") if next(failures, False) else None

    outcomes: list[bool] = []
    pool = make_pool(
        FaultyPublisher(disk(tmp_path), fault), on_error=WriteErrorPolicy.DROP, **FAST_RETRY
    )
    files = [Publication("s", n, b"x", settled=outcomes.append) for n in range(1, 5)]
    assert await publish(pool, files) == 0
    assert outcomes.count(False) == 2
    assert sample(pool, "tap_emulator_files_dropped_total", reason="eio") == 2


@pytest.mark.asyncio
async def test_a_file_retention_cannot_delete_is_counted_and_publication_goes_on(
    tmp_path: Path,
) -> None:
    """A directory (or an immutable file) where retention wants to delete: the writer lives."""
    ledger = RetentionLedger(RetentionPolicy(max_files=2))

    def refuse(name: str) -> OSError | None:
        return IsADirectoryError(errno.EISDIR, "Is a directory") if name == "s-1.pb" else None

    pool = make_pool(FaultyPublisher(disk(tmp_path), delete_fault=refuse), ledger=ledger)
    files = [Publication("s", n, b"x") for n in range(1, 11)]
    assert await publish(pool, files) == 0
    assert pool.published == 10
    assert sample(pool, "tap_emulator_retention_delete_errors_total", reason="eisdir") == 1
    assert len(ledger) == 2  # the undeletable file left the ledger all the same
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s-1.pb", "s-10.pb", "s-9.pb"]


@pytest.mark.asyncio
async def test_a_bug_while_publishing_drops_that_file_and_the_writer_lives(
    tmp_path: Path,
) -> None:
    def fault(stem: str, sequence: int, payload: bytes) -> OSError | None:
        if payload == b"poison":
            raise ValueError("a bug")
        return None

    outcomes: list[bool] = []
    pool = make_pool(FaultyPublisher(disk(tmp_path), fault))
    files = [
        Publication("s", 1, b"poison", settled=outcomes.append),
        Publication("s", 2, b"fine", settled=outcomes.append),
    ]
    assert await publish(pool, files) == 0
    assert outcomes == [False, True]


@pytest.mark.asyncio
async def test_a_writer_that_dies_is_restarted_and_reported_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(disk(tmp_path))
    real = pool.queue.take
    calls = iter([RuntimeError("a bug in the loop")])

    def take(limit: int) -> list[Publication]:
        error = next(calls, None)
        if error is not None:
            raise error
        return real(limit)

    monkeypatch.setattr(pool.queue, "take", take)
    monkeypatch.setattr("tap_emulator.write.pool._RESTART_BACKOFF_SECONDS", 0.2)
    await pool.start()
    await pool.queue.put([Publication("s", 1, b"x")])
    await asyncio.sleep(0.05)
    assert pool.problem() is not None and "restarting" in pool.problem()  # type: ignore[operator]
    assert await pool.drain(5) == 0
    await pool.close()
    assert sample(pool, "tap_emulator_writer_restarts_total") == 1


@pytest.mark.asyncio
async def test_a_slow_disk_is_never_written_from_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    class Recording(SlowPublisher):
        def publish(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
            threads.add(threading.get_ident())
            return super().publish(*args, **kwargs)  # type: ignore[arg-type]

    pool = make_pool(Recording(disk(tmp_path), 0.0), mode=WriterMode.AUTO)
    files = [Publication(f"s{r}", n, b"x") for r in range(5) for n in range(1, 65)]
    assert await publish(pool, files) == 0
    assert loop_thread not in threads


async def published_on_loop(directory: Path) -> bool:
    """Whether auto mode published on the loop while 320 small files were published there."""
    pool = make_pool(disk(directory), batch_max_items=64)
    await pool.start()
    seen = False
    for round_ in range(5):
        for n in range(64):
            await pool.queue.put([Publication(f"r{round_}", n + 1, b"x" * 100)])
        assert await pool.drain(10) == 0
        seen |= pool.publishing_on_loop
    await pool.close()
    return seen


@pytest.mark.asyncio
async def test_auto_mode_publishes_on_the_loop_only_on_a_memory_backed_directory(
    tmp_path: Path,
) -> None:
    memory = Path("/dev/shm") / f"pool-test-{tmp_path.name}"
    memory.mkdir()
    try:
        assert disk(memory).memory_backed
        assert await published_on_loop(memory)
    finally:
        for path in memory.iterdir():
            path.unlink()
        memory.rmdir()
    if disk(tmp_path).memory_backed:
        pytest.skip("the test's temporary directory is itself a tmpfs")
    assert not await published_on_loop(tmp_path)


@pytest.mark.asyncio
async def test_a_batch_stuck_in_the_disk_makes_the_pool_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tap_emulator.write.pool._STUCK_AFTER_SECONDS", 0.1)
    gate = threading.Event()
    pool = make_pool(SlowPublisher(disk(tmp_path), 0.0, gate))
    await pool.start()
    await pool.queue.put([Publication("s", 1, b"x")])
    await asyncio.sleep(0.3)
    assert "waiting" in (pool.problem() or "")
    gate.set()
    assert await pool.drain(5) == 0
    assert pool.problem() is None
    await pool.close()
