"""Giving memory back: the allocator setting, and trimming only after resident memory grew;
the ingest helpers that keep refused and waiting messages from being held twice."""

from __future__ import annotations

import pytest

from tap_emulator.ingest.streams import forget_frames
from tap_emulator.observe import memory

MiB = 1024 * 1024
glibc_only = pytest.mark.skipif(memory._LIBC is None, reason="the C library is not glibc")


@glibc_only
def test_the_allocator_takes_the_large_block_setting() -> None:
    assert memory.tune_allocator() is True


@glibc_only
def test_trim_never_reports_growth() -> None:
    assert memory.trim() >= 0


def test_resident_bytes_are_read_from_proc() -> None:
    assert memory.resident_bytes() > 10 * MiB


class FakeResident:
    def __init__(self, *values: int) -> None:
        self.values = list(values)

    def __call__(self) -> int:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


@glibc_only
def test_memory_is_trimmed_only_after_it_grew(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []

    def trim() -> int:
        trims.append(5 * MiB)
        return 5 * MiB

    monkeypatch.setattr(memory, "trim", trim)
    resident = FakeResident(100 * MiB, 110 * MiB, 140 * MiB, 135 * MiB, 150 * MiB)
    returner = memory.MemoryReturner(growth_bytes=32 * MiB, resident=resident)

    assert returner.trim_if_grown() == 0  # 110: grew 10 MiB
    assert returner.trim_if_grown() == 5 * MiB  # 140: grew 40 MiB; the level is now 135
    assert returner.trim_if_grown() == 0  # 150: 15 MiB over the level after the trim
    assert len(trims) == 1


def test_a_refusal_keeps_no_frame_of_the_message_it_refused() -> None:
    """The frames of a refusal (and of what caused it) hold the refused bytes as locals."""

    def decode(raw: bytes) -> None:
        try:
            raise ValueError("over budget")
        except ValueError as cause:
            raise RuntimeError("refused") from cause

    with pytest.raises(RuntimeError) as caught:
        decode(b"x" * MiB)
    refused = caught.value
    forget_frames(refused)
    assert refused.__traceback__ is None
    assert refused.__cause__ is not None and refused.__cause__.__traceback__ is None
