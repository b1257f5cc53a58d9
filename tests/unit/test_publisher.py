"""The output directory's publisher: whole files under names that are never overwritten."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tap_emulator import layout
from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.publisher import OutputDirError


@pytest.fixture(params=[True, False], ids=["o_tmpfile", "named_temporary"])
def unnamed(request: pytest.FixtureRequest) -> bool:
    """Both ways of publishing: unnamed O_TMPFILE files, and named temporaries."""
    return bool(request.param)


def opened(directory: Path, **options: int | bool) -> DirectoryPublisher:
    publisher = DirectoryPublisher(directory, **options)  # type: ignore[arg-type]
    publisher.open()
    return publisher


def never(stem: str, taken: int) -> int:
    raise AssertionError(f"{stem}-{taken} was taken")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_files_are_published_whole_and_no_temporary_remains(tmp_path: Path, unnamed: bool) -> None:
    publisher = opened(tmp_path, unnamed_temporaries=unnamed)
    assert publisher.method == ("o_tmpfile" if unnamed else "named_temporary")
    payloads = [os.urandom(size) for size in (0, 1, 1500, 70_000, 1_000_000)]
    for n, payload in enumerate(payloads, 1):
        assert publisher.publish("stem", n, payload, never) == n

    assert names(tmp_path) == sorted(f"stem-{n}.pb" for n in range(1, 6))
    for n, payload in enumerate(payloads, 1):
        assert (tmp_path / f"stem-{n}.pb").read_bytes() == payload


def test_a_taken_name_is_never_overwritten(tmp_path: Path, unnamed: bool) -> None:
    (tmp_path / "stem-1.pb").write_bytes(b"older run")
    publisher = opened(tmp_path, unnamed_temporaries=unnamed)
    asked: list[int] = []

    def next_free(stem: str, taken: int) -> int:
        asked.append(taken)
        return taken + 1

    assert publisher.publish("stem", 1, b"new", next_free) == 2
    assert asked == [1]
    assert (tmp_path / "stem-1.pb").read_bytes() == b"older run"
    assert (tmp_path / "stem-2.pb").read_bytes() == b"new"


def test_file_mode_does_not_depend_on_the_umask(tmp_path: Path, unnamed: bool) -> None:
    previous = os.umask(0o077)
    try:
        publisher = opened(tmp_path, file_mode=0o640, unnamed_temporaries=unnamed)
        publisher.publish("s", 1, b"x", never)
    finally:
        os.umask(previous)
    assert (tmp_path / "s-1.pb").stat().st_mode & 0o777 == 0o640


def test_fsync_option_still_publishes(tmp_path: Path) -> None:
    publisher = opened(tmp_path, fsync=True)
    for n in range(1, 5):
        publisher.publish("s", n, b"x" * n, never)
    publisher.fsync_directory()
    assert len(names(tmp_path)) == 4


def test_temporary_names_cannot_be_predicted() -> None:
    instance = layout.new_instance_id()
    assert instance != layout.new_instance_id()
    assert layout.temporary_name(instance, 1) != layout.temporary_name(instance, 1)


def test_a_taken_temporary_name_costs_a_retry_not_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if someone guessed the next names and took them, the file is still published."""
    publisher = opened(tmp_path, unnamed_temporaries=False)
    guessed = [f"{layout.TEMP_PREFIX}guessed-{n}" for n in range(3)]
    for name in guessed:
        (tmp_path / name).mkdir()
    real = layout.temporary_name
    tries = iter([*guessed, None])

    def next_name(instance: str, number: int) -> str:
        name = next(tries)
        return real(instance, number) if name is None else name

    monkeypatch.setattr(layout, "temporary_name", next_name)
    publisher.publish("s", 1, b"x", never)
    assert (tmp_path / "s-1.pb").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(guessed)


def test_sweep_removes_only_our_stale_temporaries(tmp_path: Path) -> None:
    publisher = opened(tmp_path)
    stale = tmp_path / f"{layout.TEMP_PREFIX}dead-1-aa"
    fresh = tmp_path / f"{layout.TEMP_PREFIX}alive-1-bb"
    other = tmp_path / ".tmp-something-else"
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))

    result = publisher.sweep(600)

    assert (result.removed, result.skipped) == (1, 0)
    assert not stale.exists()
    assert fresh.exists() and other.exists()


def test_sweep_leaves_what_is_not_ours_to_remove_and_says_so(tmp_path: Path) -> None:
    """A directory, or another user's file, named like a temporary: skipped, not fatal."""
    publisher = opened(tmp_path)
    (tmp_path / f"{layout.TEMP_PREFIX}999999-0").mkdir()
    theirs = tmp_path / f"{layout.TEMP_PREFIX}theirs-1-cc"
    theirs.write_bytes(b"x")
    os.chown(theirs, 12345, 12345)
    os.utime(theirs, (0, 0))

    result = publisher.sweep(0)

    assert (result.removed, result.skipped) == (0, 2)
    assert theirs.exists()


def test_scan_lists_our_files_only(tmp_path: Path) -> None:
    (tmp_path / "a-1.pb").write_bytes(b"12")
    (tmp_path / "b-7.pb").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / "c-2.pb").mkdir()  # a directory with our kind of name
    theirs = tmp_path / "d-1.pb"
    theirs.write_bytes(b"x")
    os.chown(theirs, 12345, 12345)
    publisher = opened(tmp_path)

    found = {f.name: f.size_bytes for f in publisher.scan()}

    assert found == {"a-1.pb": 2, "b-7.pb": 1}


def test_a_file_in_place_of_the_directory_is_refused_with_the_path(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OutputDirError, match="is not a directory"):
        DirectoryPublisher(not_a_dir).open()
    with pytest.raises(OutputDirError, match=str(not_a_dir)):
        DirectoryPublisher(not_a_dir / "out").open()


def test_probe_leaves_nothing_behind(tmp_path: Path, unnamed: bool) -> None:
    publisher = opened(tmp_path, unnamed_temporaries=unnamed)
    assert publisher.probe() is None
    assert names(tmp_path) == []


def test_delete_reports_a_file_already_gone_and_raises_otherwise(tmp_path: Path) -> None:
    publisher = opened(tmp_path)
    (tmp_path / "s-1.pb").write_bytes(b"x")
    (tmp_path / "s-2.pb").mkdir()
    assert publisher.delete("s-1.pb") is True
    assert publisher.delete("s-1.pb") is False
    with pytest.raises(IsADirectoryError):
        publisher.delete("s-2.pb")
