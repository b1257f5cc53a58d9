"""The writer pool: bounded queue, atomic never-overwriting publication, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tap_emulator.observe.metrics import Metrics
from tap_emulator.write.pool import (
    TEMP_PREFIX,
    OutputDirError,
    Publication,
    WriterMode,
    WriterPool,
    publish_inline_next,
)
from tap_emulator.write.retention import RetentionPolicy


@pytest.fixture(params=[True, False], ids=["o_tmpfile", "named_temporary"])
def unnamed(request: pytest.FixtureRequest) -> bool:
    """Both ways of publishing: unnamed O_TMPFILE files, and named temporaries."""
    return bool(request.param)


def pool_for(directory: Path, **options: int | bool) -> WriterPool:
    pool = WriterPool(directory, Metrics(), **options)  # type: ignore[arg-type]
    pool.open()
    return pool


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def publish_all(pool: WriterPool, publications: list[Publication]) -> None:
    await pool.start()
    try:
        for publication in publications:
            await pool.put(publication)
        assert await pool.drain(10) == 0
    finally:
        await pool.close()


async def test_files_are_published_whole_and_no_temporary_remains(
    tmp_path: Path, unnamed: bool
) -> None:
    pool = pool_for(tmp_path, unnamed_temporaries=unnamed)
    assert pool.publishing_method == ("o_tmpfile" if unnamed else "named_temporary")
    payloads = [os.urandom(size) for size in (0, 1, 1500, 70_000, 1_000_000)]
    await publish_all(pool, [Publication("stem", n, p) for n, p in enumerate(payloads, 1)])

    assert names(tmp_path) == sorted(f"stem-{n}.pb" for n in range(1, 6))
    for n, payload in enumerate(payloads, 1):
        assert (tmp_path / f"stem-{n}.pb").read_bytes() == payload


async def test_taken_name_moves_to_the_next_free_number_and_keeps_the_old_file(
    tmp_path: Path, unnamed: bool
) -> None:
    (tmp_path / "stem-1.pb").write_bytes(b"older run")
    (tmp_path / "stem-2.pb").write_bytes(b"older run too")
    metrics = Metrics()
    pool = WriterPool(tmp_path, metrics, unnamed_temporaries=unnamed)
    pool.open()
    publication = Publication("stem", 1, b"new")
    await publish_all(pool, [publication])

    assert (tmp_path / "stem-1.pb").read_bytes() == b"older run"
    assert (tmp_path / "stem-2.pb").read_bytes() == b"older run too"
    assert (tmp_path / "stem-3.pb").read_bytes() == b"new"
    assert publication.sequence == 3
    assert metrics.registry.get_sample_value("tap_emulator_sequence_collisions_total") == 1


def test_highest_published_finds_the_end_of_the_run(tmp_path: Path) -> None:
    pool = pool_for(tmp_path)
    assert pool.highest_published("a") == 0
    for n in range(1, 38):
        (tmp_path / f"a-{n}.pb").touch()
    (tmp_path / "a-x-1.pb").touch()
    assert pool.highest_published("a") == 37
    assert pool.highest_published("a-x") == 1
    assert pool.highest_published("b") == 0


def test_file_mode_does_not_depend_on_the_umask(tmp_path: Path, unnamed: bool) -> None:
    previous = os.umask(0)
    try:
        pool = pool_for(tmp_path, file_mode=0o640, unnamed_temporaries=unnamed)
        asyncio.run(publish_all(pool, [Publication("s", 1, b"x")]))
    finally:
        os.umask(previous)
    assert (tmp_path / "s-1.pb").stat().st_mode & 0o777 == 0o640


async def test_fsync_option_still_publishes(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, fsync=True)
    await publish_all(pool, [Publication("s", n, b"x" * n) for n in range(1, 20)])
    assert len(names(tmp_path)) == 19


def test_sweep_removes_only_our_dead_temporaries(tmp_path: Path) -> None:
    dead = tmp_path / f"{TEMP_PREFIX}999999-1"
    alive = tmp_path / f"{TEMP_PREFIX}1-7"  # pid 1 always runs
    other = tmp_path / ".tmp-something-else"
    for path in (dead, alive, other):
        path.write_bytes(b"x")
    removed = pool_for(tmp_path).open()

    assert removed == 0  # the first open already swept it
    assert not dead.exists()
    assert alive.exists() and other.exists()


def test_unusable_output_dir_fails_at_start_with_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OutputDirError, match=str(not_a_dir)):
        WriterPool(not_a_dir / "out", Metrics()).open()


# --- the queue --------------------------------------------------------------------------


async def test_put_waits_while_the_queue_is_full_then_resumes(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, max_items=2)  # writers not started: nothing drains
    await pool.put(Publication("s", 1, b"a"))
    await pool.put(Publication("s", 2, b"b"))
    third = asyncio.create_task(pool.put(Publication("s", 3, b"c")))
    await asyncio.sleep(0.05)
    assert not third.done()
    assert pool.unpublished == 3

    await pool.start()
    await asyncio.wait_for(third, 5)
    assert await pool.drain(5) == 0
    await pool.close()
    assert names(tmp_path) == ["s-1.pb", "s-2.pb", "s-3.pb"]


async def test_byte_bound_holds_and_an_oversized_file_is_admitted_alone(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, max_bytes=64 * 1024)
    assert pool.try_put(Publication("s", 1, bytes(60 * 1024)))
    assert not pool.try_put(Publication("s", 2, bytes(8 * 1024)))
    big = Publication("big", 1, bytes(200 * 1024))
    await pool.start()
    await asyncio.wait_for(pool.put(big), 5)
    assert await pool.drain(5) == 0
    await pool.close()
    assert (tmp_path / "big-1.pb").stat().st_size == 200 * 1024


async def test_waiters_are_admitted_in_arrival_order(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, max_items=1, writers=1)
    await pool.put(Publication("s", 1, b"1"))
    waiting = [asyncio.create_task(pool.put(Publication("s", n, b"%d" % n))) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    await pool.start()
    await asyncio.gather(*waiting)
    assert await pool.drain(5) == 0
    await pool.close()
    mtimes = [(tmp_path / f"s-{n}.pb").stat().st_mtime_ns for n in (1, 2, 3, 4)]
    assert mtimes == sorted(mtimes)


async def test_a_cancelled_waiter_still_gets_its_file_published(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, max_items=1)
    await pool.put(Publication("s", 1, b"1"))
    waiter = asyncio.create_task(pool.put(Publication("s", 2, b"2")))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert pool.unpublished == 2
    await pool.start()
    assert await pool.drain(5) == 0
    await pool.close()
    assert names(tmp_path) == ["s-1.pb", "s-2.pb"]


async def test_done_callbacks_run_once_each_after_publication(tmp_path: Path) -> None:
    pool = pool_for(tmp_path)
    seen: list[int] = []
    publications = [
        Publication("s", n, b"x", done=lambda n=n: seen.append(n)) for n in range(1, 101)
    ]
    await publish_all(pool, publications)
    assert sorted(seen) == list(range(1, 101))


# --- faults from a real file system ------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real disk that fills up (decisions.md 12)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


async def test_full_disk_holds_files_until_space_returns_then_writes_all(
    small_tmpfs: Path, unnamed: bool
) -> None:
    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(900 * 1024))
    metrics = Metrics()
    pool = WriterPool(
        small_tmpfs,
        metrics,
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        unnamed_temporaries=unnamed,
    )
    pool.open()
    await pool.start()
    payloads = [os.urandom(20 * 1024) for _ in range(20)]  # 400 KiB: does not fit
    for n, payload in enumerate(payloads, 1):
        await pool.put(Publication("s", n, payload))

    for _ in range(200):
        if pool.failing is not None:
            break
        await asyncio.sleep(0.01)
    assert pool.failing is not None
    assert pool.unpublished > 0
    assert metrics.registry.get_sample_value(
        "tap_emulator_write_errors_total", {"reason": "enospc"}
    )

    filler.unlink()
    assert await pool.drain(10) == 0
    await pool.close()
    assert pool.failing is None
    for n, payload in enumerate(payloads, 1):
        assert (small_tmpfs / f"s-{n}.pb").read_bytes() == payload
    assert not [n for n in os.listdir(small_tmpfs) if n.startswith(TEMP_PREFIX)]  # noqa: PTH208


def test_read_only_output_dir_is_refused_at_start(small_tmpfs: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(OutputDirError, match="not writable"):
        WriterPool(small_tmpfs, Metrics()).open()


# --- retention ---------------------------------------------------------------------------


async def test_file_cap_keeps_the_newest_files(tmp_path: Path) -> None:
    metrics = Metrics()
    pool = WriterPool(tmp_path, metrics, writers=1, retention=RetentionPolicy(max_files=10))
    pool.open()
    await publish_all(pool, [Publication("s", n, b"x") for n in range(1, 31)])

    assert names(tmp_path) == sorted(f"s-{n}.pb" for n in range(21, 31))
    assert metrics.registry.get_sample_value("tap_emulator_files_deleted_total") == 20
    assert metrics.registry.get_sample_value("tap_emulator_retained_files") == 10


async def test_byte_cap_deletes_oldest_first(tmp_path: Path) -> None:
    pool = WriterPool(
        tmp_path, Metrics(), writers=1, retention=RetentionPolicy(max_bytes=10 * 1024)
    )
    pool.open()
    await publish_all(pool, [Publication("s", n, bytes(1024)) for n in range(1, 26)])

    kept = names(tmp_path)
    assert kept == sorted(f"s-{n}.pb" for n in range(16, 26))
    assert sum((tmp_path / name).stat().st_size for name in kept) <= 10 * 1024


def test_existing_files_count_towards_the_cap_and_others_are_untouched(tmp_path: Path) -> None:
    for n in range(1, 6):
        path = tmp_path / f"old-{n}.pb"
        path.write_bytes(b"x")
        os.utime(path, ns=(n * 10**9, n * 10**9))
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "README.pb.bak").write_text("not ours either")
    WriterPool(tmp_path, Metrics(), retention=RetentionPolicy(max_files=2)).open()

    assert names(tmp_path) == ["README.pb.bak", "notes.txt", "old-4.pb", "old-5.pb"]


# --- where files are published ------------------------------------------------------------


# The thresholds are generous here: what is pinned is the mechanism, not this machine's speed.
async def test_auto_mode_moves_onto_the_loop_once_files_prove_fast(tmp_path: Path) -> None:
    pool = WriterPool(tmp_path, Metrics(), batch_max_items=64, fast_file_seconds=10.0)
    pool.open()
    await pool.start()
    assert not pool.publishing_inline  # it starts in the thread
    for round_ in range(3):
        for n in range(64):
            await pool.put(Publication(f"r{round_}", n + 1, b"x" * 100))
        assert await pool.drain(10) == 0
    inline = pool.publishing_inline
    await pool.close()

    assert inline, "files on a local file system take microseconds: publish on the loop"
    assert len(names(tmp_path)) == 3 * 64


async def test_thread_mode_never_publishes_on_the_loop(tmp_path: Path) -> None:
    pool = pool_for(tmp_path, mode=WriterMode.THREAD)
    await publish_all(pool, [Publication("s", n, b"x") for n in range(1, 200)])
    assert not pool.publishing_inline


async def test_a_failing_disk_moves_publishing_back_to_the_thread(small_tmpfs: Path) -> None:
    filler = small_tmpfs / "filler"
    pool = WriterPool(
        small_tmpfs,
        Metrics(),
        retry_initial_seconds=0.01,
        retry_max_seconds=0.05,
        fast_file_seconds=10.0,
    )
    pool.open()
    await pool.start()
    for n in range(1, 65):
        await pool.put(Publication("fast", n, b"x"))
    assert await pool.drain(10) == 0
    assert pool.publishing_inline

    filler.write_bytes(bytes(600 * 1024))  # 64 small files hold 256 KiB of 4 KiB pages
    await pool.put(Publication("big", 1, bytes(300 * 1024)))  # does not fit any more
    for _ in range(200):
        if pool.failing is not None:
            break
        await asyncio.sleep(0.01)
    assert pool.failing is not None
    assert not pool.publishing_inline
    filler.unlink()
    assert await pool.drain(10) == 0
    await pool.close()


@pytest.mark.parametrize(
    ("inline", "files", "seconds", "failed", "expected"),
    [
        (False, 64, 64 * 10e-6, False, True),  # fast in the thread: onto the loop
        (False, 8, 8 * 10e-6, False, False),  # too few files to judge
        (False, 64, 64 * 100e-6, False, False),  # not fast enough
        (True, 64, 64 * 100e-6, False, True),  # between the thresholds: stay
        (True, 64, 64 * 500e-6, False, False),  # slow on the loop: back to the thread
        (True, 1, 0.0, True, False),  # an error: back to the thread
        (False, 64, 0.0, True, False),
    ],
)
def test_auto_mode_choice(
    inline: bool, files: int, seconds: float, failed: bool, expected: bool
) -> None:
    choice = publish_inline_next(
        inline,
        files,
        seconds,
        failed=failed,
        fast_file_seconds=40e-6,
        slow_file_seconds=200e-6,
    )
    assert choice is expected
