"""Retention's ledger: caps applied oldest first, and each stem's highest number on disk."""

from __future__ import annotations

from tap_emulator.write.publisher import OurFile
from tap_emulator.write.retention import RetentionLedger, RetentionPolicy


def test_file_cap_gives_up_the_oldest_files() -> None:
    ledger = RetentionLedger(RetentionPolicy(max_files=2))
    doomed = [name for n in range(1, 6) for name in ledger.admit(f"s-{n}.pb", 10)]
    assert doomed == ["s-1.pb", "s-2.pb", "s-3.pb"]
    assert len(ledger) == 2


def test_byte_cap_gives_up_the_oldest_bytes() -> None:
    ledger = RetentionLedger(RetentionPolicy(max_bytes=25))
    doomed = [name for n in range(1, 6) for name in ledger.admit(f"s-{n}.pb", 10)]
    assert doomed == ["s-1.pb", "s-2.pb", "s-3.pb"]
    assert ledger.total_bytes == 20


def test_the_scan_at_start_is_ordered_by_age() -> None:
    ledger = RetentionLedger(RetentionPolicy(max_files=1))
    ledger.load([OurFile("new-1.pb", 1, 300), OurFile("old-1.pb", 1, 100)])
    assert ledger.over_cap() == ["old-1.pb"]


def test_a_stems_highest_number_survives_its_lower_files_and_ends_with_the_last() -> None:
    ledger = RetentionLedger(RetentionPolicy(max_files=2))
    for n in (1, 2, 3):
        ledger.admit(f"s-{n}.pb", 1)
    assert ledger.highest("s") == 3
    ledger.admit("other-1.pb", 1)
    ledger.admit("other-2.pb", 1)
    assert ledger.highest("s") == 0  # every file of the stem is gone
    assert ledger.highest("other") == 2
