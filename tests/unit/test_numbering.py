"""Numbers past what is on disk: the Bloom filter of stems, the shift, and the last guard."""

from __future__ import annotations

from pathlib import Path

from tap_emulator.write.directory import DirectoryPublisher
from tap_emulator.write.numbering import Numbering, StemBloomFilter
from tap_emulator.write.publisher import OurFile
from tap_emulator.write.retention import RetentionLedger, RetentionPolicy


class CountingExists:
    """`exists` over a fixed set of names, recording every question (a disk lookup)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.asked: list[str] = []

    def __call__(self, name: str) -> bool:
        self.asked.append(name)
        return name in self.names


def test_the_filter_never_forgets_a_stem_it_was_told() -> None:
    bloom = StemBloomFilter(size_bits=1 << 16)
    stems = [f"svc-{n}.ns:80-{n:032x}" for n in range(5000)]
    for stem in stems:
        bloom.add(stem)
    assert all(bloom.might_contain(stem) for stem in stems)


def test_the_filter_mostly_says_no_for_stems_it_never_saw() -> None:
    bloom = StemBloomFilter()
    for n in range(10_000):
        bloom.add(f"seen-{n}")
    false_maybes = sum(bloom.might_contain(f"unseen-{n}") for n in range(10_000))
    assert false_maybes <= 10  # ~0.01% expected for 10k stems in 8M bits


def test_a_stem_with_no_file_costs_no_lookup() -> None:
    exists = CountingExists(set())
    numbering = Numbering(exists, None, 100, 60)
    assert [numbering.first_try("new", n) for n in (1, 2, 3)] == [1, 2, 3]
    assert exists.asked == []


def test_a_stem_found_on_disk_continues_after_its_files_in_order() -> None:
    exists = CountingExists({f"a-{n}.pb" for n in range(1, 38)})
    numbering = Numbering(exists, None, 100, 60)
    numbering.learn(["a"])
    assert [numbering.first_try("a", n) for n in (1, 2, 3)] == [38, 39, 40]
    assert len(exists.asked) <= 14  # a galloping search, not a walk from 1


def test_after_a_collision_later_files_of_the_stem_move_too() -> None:
    numbering = Numbering(CountingExists({"s-1.pb", "s-2.pb"}), None, 100, 60)
    first = numbering.first_try("s", 1)  # not known to the filter: tried as planned
    assert first == 1
    assert numbering.next_free("s", 1) == 3  # link said EEXIST; the run ends at 2
    assert numbering.first_try("s", 2) == 4
    assert numbering.collisions == 1


def test_with_retention_numbers_go_up_even_when_the_lowest_files_are_gone() -> None:
    """Retention deletes a stem's lowest numbers first: -4..-6 left, the next is -7."""
    ledger = RetentionLedger(RetentionPolicy(max_files=3))
    ledger.load(OurFile(f"s-{n}.pb", 1, n) for n in range(1, 7))
    assert ledger.over_cap() == ["s-1.pb", "s-2.pb", "s-3.pb"]
    numbering = Numbering(CountingExists(set()), ledger, 100, 60)
    numbering.learn(["s"])
    assert [numbering.first_try("s", 1), numbering.first_try("s", 2)] == [7, 8]


def test_a_real_directory_restart_never_reuses_a_number(tmp_path: Path) -> None:
    publisher = DirectoryPublisher(tmp_path)
    publisher.open()
    for n in range(1, 6):
        (tmp_path / f"s-{n}.pb").write_bytes(b"old")
    numbering = Numbering(publisher.exists, None, 100, 60)
    numbering.learn(["s"])
    got = [
        publisher.publish("s", n, b"new", numbering.next_free)
        for n in (numbering.first_try("s", 1), numbering.first_try("s", 2))
    ]
    assert got == [6, 7]
    assert all((tmp_path / f"s-{n}.pb").read_bytes() == b"old" for n in range(1, 6))
