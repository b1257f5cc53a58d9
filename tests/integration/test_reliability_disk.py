"""Reliability, the disk: files retention cannot delete, a frozen file system, a file over the
size limit, names that look like our temporaries, instances that share a volume from other PID
namespaces, and running out of file descriptors.

Every fault is real (an ext4 image frozen with `fsfreeze` or made immutable with `chattr +i`, a
tmpfs, `prlimit` on the server process, a PID namespace of its own, another user in a sticky
directory); the servers are real `tap-emulator serve` processes. Each docstring gives what the
code before the fix did ("before") and what it does now ("after").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import raw_tap
from tests.helpers.emulator import published, wait_for
from tests.helpers.mounts import ext4_image, freeze, thaw
from tests.helpers.namespaces import own_pid_namespace
from tests.helpers.paths import REPO
from tests.helpers.probes import (
    counter,
    exit_after,
    http_get,
    log_has,
    send_signal,
    server_pid,
)
from tests.helpers.raw_tap import HeldStream, send_stream
from tests.helpers.unavailable import unavailable

NOBODY = 65534
SERVER_UID = 65533  # an unprivileged user of its own, so that NOBODY's files are not its
TEMP_PREFIX = ".tap-emulator-tmp-"
SERVE = [sys.executable, "-m", "tap_emulator"]


def as_user(uid: int) -> list[str]:
    """`serve` run as `uid`; skips (printing why) where that user cannot reach this checkout,
    for example a clone under a mode-0700 directory such as `mktemp -d` makes."""
    command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *SERVE]
    reached = subprocess.run(
        [*command, "--version"], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    if reached.returncode != 0:
        unavailable(
            f"user {uid} cannot run the emulator from {REPO}: {reached.stderr.strip()[-200:]}"
        )
    return command


# The page runs in a process the emulator starts from its own interpreter; on this machine that
# interpreter lives under /root (mode 0700), which another user cannot exec. These tests are
# about the disk, so the page stays off (the emulator says so and stops if it cannot start it).
NO_PAGE = ("--ui-listen", "")


@contextmanager
def shared_sticky_directory() -> Iterator[Path]:
    """A world-writable sticky directory like /tmp, reachable by every user."""
    directory = Path(tempfile.mkdtemp(prefix="tap-sticky-", dir="/tmp"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def messages(authority: str, trace: str, numbers: range, body_bytes: int = 0) -> list[bytes]:
    return [
        raw_tap.buffered(authority, trace, n=n, first=n == numbers.start, body_bytes=body_bytes)
        for n in numbers
    ]


def pb_names(directory: Path) -> list[str]:
    """Every entry named like a published file, whatever it is (a directory, say)."""
    return [path.name for path in directory.iterdir() if path.name.endswith(".pb")]


# --- item 2: a file retention cannot delete ------------------------------------------------


def _make_a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_immutable(path: Path) -> None:
    subprocess.run(["chattr", "+i", str(path)], check=True)


@pytest.mark.parametrize(
    ("fault", "reason"), [("directory", "eisdir"), ("immutable", "eacces")], ids=str
)
def test_a_file_retention_cannot_delete_never_stops_publication(
    start_emulator: Any, tmp_path: Path, fault: str, reason: str
) -> None:
    """Item 2. Retention keeps 5 files; the oldest, the next to delete, is replaced by a
    directory of the same name, or made immutable (`chattr +i` on ext4). Before: the writer
    died at that delete; 0 of the next 25 files were written, the stream unanswered after
    15 s, nothing counted or logged, /readyz 200. After: the failed delete is counted and
    logged, and all 25 are written."""
    with ext4_image(tmp_path / "ext4") as out:
        emulator = start_emulator("--retention-max-files", "5", output_dir=out)
        trace = "d" * 32
        assert send_stream(emulator.tap, messages("ret.ns:80", trace, range(1, 6))).code == "OK"
        oldest = out / f"ret.ns:80-{trace}-1.pb"
        (_make_a_directory if fault == "directory" else _make_immutable)(oldest)

        answer = send_stream(emulator.tap, messages("ret.ns:80", trace, range(6, 31)), 15)

        names = sorted(pb_names(out), key=lambda name: int(name.rsplit("-", 1)[1][:-3]))
        errors = counter(emulator, "tap_emulator_retention_delete_errors_total", reason=reason)
        print(f"observed ({fault}): {answer.code}; on disk {len(names)}; delete errors {errors}")
        assert answer.code == "OK"
        assert names == [oldest.name] + [f"ret.ns:80-{trace}-{n}.pb" for n in range(26, 31)]
        assert counter(emulator, "tap_emulator_files_written_total") == 30
        assert errors == 1
        assert log_has(emulator, f"retention could not delete {oldest.name}")
        assert http_get(f"{emulator.metrics_url}/readyz")[0] == 200


def test_another_users_file_named_like_ours_is_neither_counted_nor_deleted(
    start_emulator: Any,
) -> None:
    """Item 2, a shared /tmp. In a sticky directory another user owns `ret.ns:80-...-1.pb`;
    the emulator runs as a user of its own with retention. Before: the file was counted as
    ours, its delete failed (EPERM) and the writer died: 5 of 10 written, no answer. After:
    it is left alone and all 10 are written (5 kept)."""
    with shared_sticky_directory() as out:
        trace = "f" * 32
        foreign = out / f"ret.ns:80-{trace}-1.pb"
        foreign.write_bytes(b"someone else's")
        os.chown(foreign, NOBODY, NOBODY)
        emulator = start_emulator(
            "--retention-max-files", "5", *NO_PAGE, output_dir=out, entry=as_user(SERVER_UID)
        )
        answer = send_stream(emulator.tap, messages("ret.ns:80", trace, range(1, 11)), 15)

        ours = sorted(name for name in published(out) if (out / name).stat().st_uid == SERVER_UID)
        print(f"observed: {answer.code}; ours on disk {len(ours)}")
        assert answer.code == "OK"
        assert foreign.read_bytes() == b"someone else's"
        assert len(ours) == 5


# --- item 3: a frozen file system ----------------------------------------------------------

DRAIN_TIMEOUT_SECONDS = 3
EXIT_MARGIN_SECONDS = 7  # docs/behaviour.md, Shutdown: drain_timeout_seconds plus 7 seconds


def _frozen_server_with_accepted_files(start_emulator: Any, out: Path) -> tuple[Any, HeldStream]:
    emulator = start_emulator(
        "--drain-timeout-seconds", str(DRAIN_TIMEOUT_SECONDS), output_dir=out
    )  # fmt: skip
    assert send_stream(emulator.tap, messages("warm.ns:80", "1" * 32, range(1, 4))).code == "OK"
    freeze(out)
    stream = HeldStream(emulator.tap, timeout=60).send(
        *messages("frozen.ns:80", "2" * 32, range(1, 6))
    )
    assert wait_for(lambda: stream.sent == 5, timeout=10)
    return emulator, stream


def _main_thread_ended(pid: int) -> bool:
    """The process has exited as far as the kernel lets it: its main thread is gone (the
    process is a zombie, or fully reaped). A thread waiting on a frozen file system cannot be
    interrupted by any signal, SIGKILL included; the exit completes when the disk thaws."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _exit_on_a_frozen_disk(
    emulator: Any, out: Path, since: float, bound: float
) -> tuple[float | None, int | None, float]:
    """Wait for the exit decision (`bound` seconds at most), then thaw; returns (seconds to
    the decision or None, exit status after the thaw, seconds from thaw to exit)."""
    pid = server_pid(emulator)
    ended = wait_for(lambda: _main_thread_ended(pid), timeout=bound, interval=0.02)
    decided = time.monotonic() - since if ended else None
    thawed = time.monotonic()
    thaw(out)
    status, after_thaw = exit_after(emulator, thawed, 30)
    return decided, status, after_thaw


@pytest.mark.slow
def test_a_frozen_disk_leaves_liveness_answered_and_sigterm_acted_on(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 3. With the output directory's file system frozen (`fsfreeze -f`) and accepted
    files stuck in a writer: /healthz answers every second, /readyz answers (503, "not
    responding"), and within drain_timeout + 7 s of SIGTERM the process logs how many
    accepted files were not written and exits 1 (as far as the kernel allows: its stuck
    writer thread is released when the disk thaws, and the exit completes then at once).
    Before: /healthz and /readyz timed out (the readiness probe ran on the event loop) and
    SIGTERM was acted on only once the disk thawed (here: 1 of 8 /healthz, 0 of 8 /readyz
    answered, exit 0 after the thaw; the red team: 32 s against a 5 s drain timeout).
    After: 8 of 8 health checks; exit decided 3.0 s after SIGTERM (drain timeout 3 s)."""
    with ext4_image(tmp_path / "ext4") as out:
        emulator, stream = _frozen_server_with_accepted_files(start_emulator, out)
        answered = 0
        ready_answers: list[int | None] = []
        for _ in range(8):
            started = time.monotonic()
            status, _ = http_get(f"{emulator.metrics_url}/healthz", timeout=1.0)
            answered += status == 200
            ready_answers.append(http_get(f"{emulator.metrics_url}/readyz", timeout=1.0)[0])
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))  # one check a second
        signalled = time.monotonic()
        send_signal(emulator)
        bound = DRAIN_TIMEOUT_SECONDS + EXIT_MARGIN_SECONDS
        decided, status, after_thaw = _exit_on_a_frozen_disk(emulator, out, signalled, bound)
        print(
            f"observed: /healthz {answered}/8, /readyz {ready_answers}; exit decided "
            f"{decided}s after SIGTERM, status {status} {after_thaw:.2f}s after the thaw"
        )
        assert answered == 8
        assert None not in ready_answers
        assert ready_answers[-1] == 503
        assert decided is not None and decided <= bound
        assert status == 1
        assert after_thaw <= 2.0
        assert log_has(emulator, "5 accepted files were not written")
        stream.cancel()


@pytest.mark.slow
def test_a_second_sigterm_exits_at_once_even_on_a_frozen_disk(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 3. Frozen disk, accepted files stuck: a second SIGTERM ends the process at once
    (the exit completes when the disk thaws, as above). Before: neither signal was acted on
    until the disk thawed. After: exit decided within 0.1 s of the second signal."""
    with ext4_image(tmp_path / "ext4") as out:
        emulator, stream = _frozen_server_with_accepted_files(start_emulator, out)
        # Let the directory's probe meet the frozen disk (it reports so after 5 s) first.
        wait_for(lambda: "not responding" in http_get(f"{emulator.metrics_url}/readyz")[1], 8)
        send_signal(emulator)
        wait_for(lambda: log_has(emulator, "SIGTERM received"), timeout=5)
        second = time.monotonic()
        send_signal(emulator)
        decided, status, _ = _exit_on_a_frozen_disk(emulator, out, second, 2.0)
        print(f"observed: exit decided {decided}s after the second SIGTERM, status {status}")
        assert decided is not None and decided <= 2.0
        assert status == 1
        assert log_has(emulator, "second SIGTERM")
        stream.cancel()


# --- item 7: one file over the file size limit ---------------------------------------------


def test_a_file_over_the_size_limit_is_dropped_and_the_rest_are_written(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 7. The server runs under `prlimit --fsize=100000`; a stream sends one message of
    200 KB and then 25 small ones, with `on_write_error: block`. Before: the big file was
    retried forever at the head of the queue; 0 of 25 small files written. After: the big one
    is dropped (EFBIG, counted), the 25 are written, the stream is answered DATA_LOSS."""
    limited = ["prlimit", "--fsize=100000", *SERVE]
    emulator = start_emulator("--on-write-error", "block", entry=limited)
    big = raw_tap.buffered("big.ns:80", "b" * 32, n=1, first=True, body_bytes=200_000)
    small = messages("small.ns:80", "5" * 32, range(2, 27))
    answer = send_stream(emulator.tap, [big, *small], timeout=15)

    names = sorted(published(emulator.output_dir))
    dropped = counter(emulator, "tap_emulator_files_dropped_total", reason="efbig")
    print(f"observed: {answer.code}; {len(names)} of 25 small files; efbig drops {dropped}")
    assert answer.code == "DATA_LOSS"
    assert "1 of this stream's files were dropped" in answer.details
    assert names == sorted(f"small.ns:80-{'5' * 32}-{n}.pb" for n in range(1, 26))
    assert dropped == 1


# --- item 9: entries named like our temporaries --------------------------------------------


def test_a_directory_named_like_a_temporary_does_not_stop_the_start(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 9. Before: IsADirectoryError traceback at start. After: the server starts, warns,
    and leaves the directory alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{TEMP_PREFIX}999999-0").mkdir()
    server = start_emulator(output_dir=out)

    print(f"observed: running {server.process.poll() is None}; last line {server.log_lines[-1]!r}")
    assert log_has(server, "named like our temporaries")
    assert (out / f"{TEMP_PREFIX}999999-0").is_dir()
    assert send_stream(server.tap, messages("ok.ns:80", "6" * 32, range(1, 3))).code == "OK"


def test_another_users_temporary_in_a_sticky_directory_does_not_stop_the_start(
    start_emulator: Any,
) -> None:
    """Item 9, a shared /tmp: another user's file named like a stale temporary, the server
    running as a user of its own. Before: PermissionError traceback at start. After: the
    server starts, warns, and leaves the file alone."""
    with shared_sticky_directory() as out:
        foreign = out / f"{TEMP_PREFIX}999999-1"
        foreign.write_bytes(b"not yours")
        os.chown(foreign, NOBODY, NOBODY)
        an_hour_ago = time.time() - 3600
        os.utime(foreign, (an_hour_ago, an_hour_ago))
        server = start_emulator(*NO_PAGE, output_dir=out, entry=as_user(SERVER_UID))

        last = server.log_lines[-1]
        print(f"observed: running {server.process.poll() is None}; last line {last!r}")
        assert log_has(server, "named like our temporaries")
        assert foreign.read_bytes() == b"not yours"
        assert send_stream(server.tap, messages("ok.ns:80", "7" * 32, range(1, 3))).code == "OK"


# --- items 10 and 13: named temporaries, and instances in other PID namespaces -------------


def test_named_temporaries_cannot_be_taken_ahead_of_the_server(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 10. Without /proc links (here: an empty /proc in a mount namespace of its own, as
    on a file system without O_TMPFILE) files are written under named temporaries. Someone
    creates 40 of the names the server will use next. Before: names were `<pid>-<n>` (pid 1
    in a container): every publish met EEXIST and was retried with backoff, 0 of 5 written
    after 10 s (the red team: over 60 s). After: names are random; all 5 written at once."""
    out = tmp_path / "out"
    emulator = start_emulator(output_dir=out, entry=[*own_pid_namespace(hide_proc=True), *SERVE])
    assert log_has(emulator, "publish=named_temporary")
    for number in range(40):
        (out / f"{TEMP_PREFIX}1-{number}").write_bytes(b"taken")
    answer = send_stream(emulator.tap, messages("named.ns:80", "8" * 32, range(1, 6)), 10)

    written = sorted(name for name in published(out) if name.startswith("named.ns:80-"))
    print(f"observed: {answer.code}; {len(written)} of 5 written")
    assert answer.code == "OK"
    assert len(written) == 5
    send_signal(emulator)
    assert exit_after(emulator, time.monotonic(), 20)[0] == 0


def test_a_start_in_another_pid_namespace_leaves_a_live_instances_temporaries(
    start_emulator: Any, tmp_path: Path
) -> None:
    """Item 13. Two instances share a volume, each pid 1 of its own PID namespace. The first
    is writing a temporary (planted here under both naming schemes, just created) when the
    second starts and sweeps. Before: the second took `.tap-emulator-tmp-1-*` for its own
    dead past (pid 1 == pid 1) and deleted it. After: temporaries carry a random instance id
    and only ten-minute-old ones are swept: both survive."""
    out = tmp_path / "out"
    out.mkdir()
    old_scheme = out / f"{TEMP_PREFIX}1-3"
    new_scheme = out / f"{TEMP_PREFIX}{'ab' * 12}-3-0badcafe"
    for live in (old_scheme, new_scheme):
        live.write_bytes(b"being written by the other instance")
    second = start_emulator(output_dir=out, entry=[*own_pid_namespace(), *SERVE])

    print(f"observed: left {sorted(p.name for p in out.iterdir())}")
    assert old_scheme.exists()
    assert new_scheme.exists()
    assert not log_has(second, "removed")
    send_signal(second)
    assert exit_after(second, time.monotonic(), 20)[0] == 0


# --- item 15: out of file descriptors ------------------------------------------------------


def _lowest_free_fd(pid: int) -> int:
    taken = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}  # noqa: PTH208
    return next(fd for fd in range(len(taken) + 1) if fd not in taken)


def _soft_open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open files limit")


def test_out_of_file_descriptors_is_counted_as_emfile(start_emulator: Any) -> None:
    """Item 15. The server's descriptor limit is lowered (`prlimit --nofile`) so that no file
    can be opened, then a message arrives; then the limit is restored. Before: counted and
    logged as `reason="other"`. After: `reason="emfile"`, and the file is written once
    descriptors are back."""
    emulator = start_emulator()
    stream = HeldStream(emulator.tap).send(raw_tap.buffered("fd.ns:80", "9" * 32, first=True))
    out = emulator.output_dir
    assert wait_for(lambda: (out / f"fd.ns:80-{'9' * 32}-1.pb").exists())
    pid = server_pid(emulator)
    soft = _soft_open_files_limit(pid)
    limit = f"--nofile={_lowest_free_fd(pid)}:"
    subprocess.run(["prlimit", f"--pid={pid}", limit], check=True)
    try:
        stream.send(raw_tap.buffered("fd.ns:80", "9" * 32, n=2))
        assert wait_for(lambda: log_has(emulator, "cannot publish"), timeout=15)
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True)
    answer = stream.finish(20)

    said = next(line for line in emulator.log_lines if "cannot publish" in line)
    reason = re.search(r"\((\w+): Too many open files\)", said)
    print(f"observed: logged {said.split(': ', 1)[-1]!r}")
    assert answer.code == "OK"
    assert (out / f"fd.ns:80-{'9' * 32}-2.pb").exists()
    assert reason is not None and reason[1] == "emfile"
    assert counter(emulator, "tap_emulator_write_errors_total", reason="emfile") >= 1
    assert counter(emulator, "tap_emulator_write_errors_total", reason="other") == 0
    send_signal(emulator)
    assert exit_after(emulator, time.monotonic(), 20)[0] == 0
