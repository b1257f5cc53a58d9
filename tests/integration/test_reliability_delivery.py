"""Reliability, what is delivered: accepted messages are whole on disk after a drain, the drop
policy says what it lost, empty traces make no files, one stream's churn never renames another
stream's files, and a stem's numbers only go up.

Each test is a red-team finding turned into a check against real `tap-emulator serve`
processes; its docstring gives what the code before the fix did ("before") and what it does
now ("after"). docs/hardening.md (section 10) lists them with the command that reruns them.
"""

from __future__ import annotations

import errno
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import raw_tap
from tests.helpers.emulator import published, wait_for
from tests.helpers.mounts import tmpfs
from tests.helpers.probes import counter, exit_after, log_has, send_signal
from tests.helpers.raw_tap import HeldStream, send_stream

TOTALS = re.compile(r"accepted (\d+) messages, published (\d+) files")


def fill(directory: Path) -> Path:
    """Fill the file system holding `directory` to the last byte."""
    filler = directory / "filler.bin"
    failure: OSError | None = None
    with filler.open("wb", buffering=0) as out:
        while failure is None:
            try:
                out.write(b"\0" * 65536)
            except OSError as error:
                failure = error
    assert failure.errno == errno.ENOSPC
    return filler


def totals(log: str) -> tuple[int, int]:
    found = TOTALS.findall(log)
    assert found, log
    accepted, files = found[-1]
    return int(accepted), int(files)


@pytest.mark.slow
def test_sigterm_while_senders_wait_for_room_leaves_no_half_message_in_req_res(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 1. A full disk holds the writers, so five req_res streams wait for queue room;
    SIGTERM ends them while they wait, then the disk is freed. Every accepted message must
    have both its files. Before: accepted 7, 9 files of 14 (the red team: 49 accepted, 94
    files of 98, 4 messages with only `req`), "stopped cleanly", exit 0. After: 2 files for
    every accepted message (7, 14 of 14)."""
    with tmpfs(tmp_path / "small", "1m") as out:
        filler = fill(out)
        emulator = start_emulator(
            "--name-format", "req_res",
            "--queue-max-items", "4",
            "--drain-timeout-seconds", "30",
            output_dir=out,
        )  # fmt: skip
        streams = [
            HeldStream(emulator.tap).send(
                *(
                    raw_tap.buffered(f"s{s}.ns:80", f"{s:016x}{n:016x}", n=n + 1, first=n == 0)
                    for n in range(20)
                )
            )
            for s in range(5)
        ]
        assert wait_for(
            lambda: (
                counter(emulator, "tap_emulator_write_errors_total") > 0
                and counter(emulator, "tap_emulator_queue_items") >= 4
            ),
            timeout=20,
        )
        send_signal(emulator)
        assert wait_for(lambda: log_has(emulator, "draining: streams closed"), timeout=20)
        filler.unlink()
        status, _ = exit_after(emulator, time.monotonic(), 40)
        answers = [stream.answer(10) for stream in streams]

        accepted, files_said = totals(emulator.log)
        on_disk = sorted(published(out))
        halves: dict[str, set[str]] = {}
        for name in on_disk:
            stem, half, _ = name.rsplit("-", 2)
            halves.setdefault(stem, set()).add(half)
        lone = sorted(stem for stem, seen in halves.items() if seen != {"req", "res"})
        print(f"observed: accepted {accepted}, {len(on_disk)} files of {2 * accepted}")
        assert {answer.code for answer in answers} <= {"UNAVAILABLE", "OK"}
        assert lone == []
        assert len(on_disk) == files_said == 2 * accepted
        assert status == 0


def test_drop_policy_answers_data_loss_and_its_log_says_it_drops(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 14. With `on_write_error: drop` on a full disk, a stream whose files were dropped
    is not told OK (OK promises everything on disk). Before: OK, and the log said "retrying
    while senders are held back". After: DATA_LOSS "10 of this stream's files were dropped",
    and the log says it drops."""
    with tmpfs(tmp_path / "small", "1m") as out:
        fill(out)
        emulator = start_emulator("--on-write-error", "drop", output_dir=out)
        messages = [
            raw_tap.buffered("drop.ns:80", f"{n:032x}", n=n + 1, first=n == 0) for n in range(10)
        ]
        answer = send_stream(emulator.tap, messages, timeout=20)

        dropped = counter(emulator, "tap_emulator_files_dropped_total")
        print(f"observed: {answer.code} {answer.details!r}; dropped {dropped:.0f}")
        assert answer.code == "DATA_LOSS"
        assert "10 of this stream's files were dropped" in answer.details
        assert dropped == 10
        assert log_has(emulator, "dropping each file that fails (on_write_error: drop)")
        assert not log_has(emulator, "retrying while senders are held back")


def test_empty_traces_are_counted_and_make_no_files(start_emulator: Any) -> None:
    """Item 15 (StreamTaps part). A thousand messages whose trace is present but empty
    (`"trace": {}`) are accepted and counted, and write nothing. Before: 1,000
    `empty-trace-*` files. After: only the one real trace's file."""
    emulator = start_emulator()
    empties = [raw_tap.empty_trace(n) for n in range(1, 1001)]
    real = raw_tap.buffered("real.ns:80", "e" * 32, n=5000)
    answer = send_stream(emulator.tap, [raw_tap.identifier_only(), *empties, real])

    files = sorted(published(emulator.output_dir))
    print(f"observed: {len(files)} files for 1,000 empty traces and 1 real one")
    assert answer.code == "OK"
    assert files == [f"real.ns:80-{'e' * 32}-1.pb"]
    assert counter(emulator, "tap_emulator_messages_received_total") == 1002
    assert counter(emulator, "tap_emulator_messages_received_total", kind="none") == 1001


def test_one_streams_churn_never_renames_another_streams_files(start_emulator: Any) -> None:
    """Item 11. Stream A opens a streamed transaction; stream B then sends 1,000 new ones
    through a table of 100; A's next segment must still be named after A's request headers.
    Before: A's entry was evicted and its segment written as `no-authority-7-1.pb`. After:
    B's churn forgets B's own oldest entries."""
    emulator = start_emulator(
        "--queue-max-items", "50",
        "--writer-batch-max-items", "10",
        "--correlation-max-entries", "100",
    )  # fmt: skip
    victim_trace = "a" * 32
    victim = HeldStream(emulator.tap).send(
        raw_tap.segment_headers("victim.ns:80", victim_trace, 7, first=True)
    )
    out = emulator.output_dir
    assert wait_for(lambda: (out / f"victim.ns:80-{victim_trace}-1.pb").exists())
    churn = [
        raw_tap.segment_headers(f"churn{n}.ns:80", f"{n:032x}", 1000 + n, first=n == 0)
        for n in range(1000)
    ]
    assert send_stream(emulator.tap, churn).code == "OK"
    victim.send(raw_tap.segment_body(7))
    assert victim.finish().code == "OK"

    names = sorted(published(out))
    victims = [name for name in names if name.startswith("victim.ns:80-")]
    strays = [name for name in names if name.startswith("no-authority-")]
    print(f"observed: victim's files {victims}, unnamed {strays}")
    assert strays == []
    assert victims == [f"victim.ns:80-{victim_trace}-1.pb", f"victim.ns:80-{victim_trace}-2.pb"]


@pytest.mark.parametrize("forgotten_by", ["restart", "idle"])
def test_with_retention_a_stems_numbers_only_go_up(
    start_emulator: Any, tmp_path: Path, forgotten_by: str
) -> None:
    """Item 12. Retention keeps 3 files; a stem's -1..-3 are deleted, -4..-6 remain. After a
    restart, or once the stem was forgotten (idle 1 s), its next files must be -7 and -8.
    Before: -1 and -2 again (the floor was found by counting up from -1). After: -7, -8."""
    out = tmp_path / "out"
    args = ["--retention-max-files", "3", "--correlation-idle-seconds", "1"]
    trace = "c" * 32
    first = start_emulator(*args, output_dir=out)
    first_batch = [raw_tap.buffered("keep.ns:80", trace, n=n, first=n == 1) for n in range(1, 7)]
    assert send_stream(first.tap, first_batch).code == "OK"
    assert sorted(published(out)) == [f"keep.ns:80-{trace}-{n}.pb" for n in (4, 5, 6)]
    if forgotten_by == "restart":
        assert first.stop() == 0
        server = start_emulator(*args, output_dir=out)
    else:
        server = first
        # The condition is time itself: the stem is forgotten once it is idle this long.
        time.sleep(1.5)
    later = [raw_tap.buffered("keep.ns:80", trace, n=n, first=n == 1) for n in (1, 2)]
    assert send_stream(server.tap, later).code == "OK"

    names = sorted(published(out), key=lambda name: int(name.rsplit("-", 1)[1][:-3]))
    print(f"observed ({forgotten_by}): {names}")
    assert names == [f"keep.ns:80-{trace}-{n}.pb" for n in (6, 7, 8)]
    assert server.stop(signal.SIGTERM) == 0
