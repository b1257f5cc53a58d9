"""Correlation state: bounded by entries and idle time, evictions counted."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tap_emulator.bounded import BoundedLru
from tap_emulator.derive.correlate import SegmentNames, SequenceCounter, TraceName

# --- helpers ----------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def name(prefix: str) -> TraceName:
    return TraceName(prefix, "abc")


# --- BoundedLru: entries ----------------------------------------------------------------


def test_lru_holds_at_most_max_entries() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2, idle_seconds=60, clock=FakeClock())

    for index, key in enumerate("abcde"):
        lru.put(key, index)

    assert len(lru) == 2


def test_lru_forgets_the_least_recently_put_entry_first() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2, idle_seconds=60, clock=FakeClock())
    lru.put("a", 1)
    lru.put("b", 2)

    lru.put("c", 3)

    assert "a" not in lru
    assert lru.get("b") == 2
    assert lru.get("c") == 3


def test_lru_get_refreshes_an_entry() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2, idle_seconds=60, clock=FakeClock())
    lru.put("a", 1)
    lru.put("b", 2)
    lru.get("a")

    lru.put("c", 3)

    assert lru.get("a") == 1
    assert "b" not in lru


def test_lru_put_of_an_existing_key_refreshes_and_replaces_it() -> None:
    lru: BoundedLru[str, int] = BoundedLru(2, idle_seconds=60, clock=FakeClock())
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 10)

    lru.put("c", 3)

    assert lru.get("a") == 10
    assert "b" not in lru
    assert lru.evictions.capacity == 1


def test_lru_counts_capacity_evictions() -> None:
    lru: BoundedLru[str, int] = BoundedLru(3, idle_seconds=60, clock=FakeClock())

    for index in range(10):
        lru.put(f"k{index}", index)

    assert lru.evictions.capacity == 7
    assert lru.evictions.idle == 0
    assert lru.evictions.total == 7


def test_lru_rejects_a_bound_below_one() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        BoundedLru(0, idle_seconds=60)


# --- BoundedLru: idle time --------------------------------------------------------------


def test_lru_keeps_an_entry_until_it_has_been_idle_for_idle_seconds() -> None:
    clock = FakeClock()
    lru: BoundedLru[str, int] = BoundedLru(10, idle_seconds=30, clock=clock)
    lru.put("a", 1)

    clock.advance(29.9)

    assert lru.get("a") == 1


def test_lru_forgets_an_idle_entry() -> None:
    clock = FakeClock()
    lru: BoundedLru[str, int] = BoundedLru(10, idle_seconds=30, clock=clock)
    lru.put("a", 1)

    clock.advance(30.1)

    assert lru.get("a") is None
    assert len(lru) == 0


def test_lru_touching_an_entry_restarts_its_idle_time() -> None:
    clock = FakeClock()
    lru: BoundedLru[str, int] = BoundedLru(10, idle_seconds=30, clock=clock)
    lru.put("a", 1)
    clock.advance(20)
    lru.get("a")

    clock.advance(20)

    assert lru.get("a") == 1


def test_lru_counts_idle_evictions_apart_from_capacity_ones() -> None:
    clock = FakeClock()
    lru: BoundedLru[str, int] = BoundedLru(2, idle_seconds=30, clock=clock)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("c", 3)  # capacity: a
    clock.advance(31)

    lru.expire()  # idle: b, c

    assert lru.evictions.capacity == 1
    assert lru.evictions.idle == 2
    assert len(lru) == 0


def test_lru_expires_idle_entries_on_put_of_another_key() -> None:
    clock = FakeClock()
    lru: BoundedLru[str, int] = BoundedLru(10, idle_seconds=30, clock=clock)
    lru.put("old", 1)
    clock.advance(31)

    lru.put("new", 2)

    assert "old" not in lru
    assert lru.evictions.idle == 1


def test_lru_tells_on_evict_about_every_forgotten_key() -> None:
    clock = FakeClock()
    forgotten: list[str] = []
    lru: BoundedLru[str, int] = BoundedLru(
        1, idle_seconds=30, clock=clock, on_evict=forgotten.append
    )
    lru.put("a", 1)
    lru.put("b", 2)
    clock.advance(31)

    lru.expire()

    assert forgotten == ["a", "b"]


def test_lru_pop_is_not_an_eviction() -> None:
    forgotten: list[str] = []
    lru: BoundedLru[str, int] = BoundedLru(5, idle_seconds=30, on_evict=forgotten.append)
    lru.put("a", 1)

    assert lru.pop("a") == 1
    assert lru.pop("a") is None
    assert lru.evictions.total == 0
    assert forgotten == []


# --- SequenceCounter --------------------------------------------------------------------


def test_first_sequence_of_a_new_stem_is_1() -> None:
    counter = SequenceCounter(max_entries=10, idle_seconds=60, clock=FakeClock())

    assert counter.next("a-1") == 1


def test_second_file_of_same_stem_gets_sequence_2() -> None:
    counter = SequenceCounter(max_entries=10, idle_seconds=60, clock=FakeClock())
    counter.next("a-1")

    assert counter.next("a-1") == 2


def test_each_stem_counts_on_its_own() -> None:
    counter = SequenceCounter(max_entries=10, idle_seconds=60, clock=FakeClock())

    assert [counter.next(stem) for stem in ["a", "b", "a", "b", "a"]] == [1, 1, 2, 2, 3]


def test_a_forgotten_stem_starts_again_at_1_and_asks_nothing() -> None:
    """The counter never looks at the disk: the writers move a restarted stem past its files
    (tests/unit/test_numbering.py)."""
    clock = FakeClock()
    counter = SequenceCounter(max_entries=10, idle_seconds=60, clock=clock)
    counter.next("a")
    counter.next("a")
    clock.advance(61)

    assert counter.next("a") == 1
    assert counter.evictions.idle == 1


def test_sequence_counter_holds_at_most_max_entries_stems() -> None:
    counter = SequenceCounter(max_entries=3, idle_seconds=60, clock=FakeClock())

    for index in range(10):
        counter.next(f"s{index}")

    assert len(counter) == 3
    assert counter.evictions.capacity == 7


# --- SegmentNames -----------------------------------------------------------------------


def test_segment_name_is_found_on_the_same_stream_and_trace_id() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))

    assert names.get(1, 99) == name("a")


def test_same_trace_id_on_another_stream_is_another_transaction() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))

    assert names.get(2, 99) is None


def test_forget_stream_removes_that_streams_names() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))
    names.remember(1, 100, name("b"))

    names.forget_stream(1)

    assert names.get(1, 99) is None
    assert names.get(1, 100) is None
    assert len(names) == 0


def test_forget_stream_keeps_other_streams_names() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))
    names.remember(2, 99, name("b"))

    names.forget_stream(1)

    assert names.get(2, 99) == name("b")


def test_forget_stream_is_not_counted_as_an_eviction() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))

    names.forget_stream(1)

    assert names.evictions.total == 0


def test_forget_stream_of_an_unknown_stream_does_nothing() -> None:
    names = SegmentNames(10, 60, clock=FakeClock())
    names.remember(1, 99, name("a"))

    names.forget_stream(7)

    assert names.get(1, 99) == name("a")


def test_segment_names_are_bounded_and_count_capacity_evictions() -> None:
    names = SegmentNames(2, 60, clock=FakeClock())

    for trace_id in range(5):
        names.remember(1, trace_id, name("a"))

    assert len(names) == 2
    assert names.evictions.capacity == 3


def test_idle_segment_name_is_forgotten_and_counted() -> None:
    clock = FakeClock()
    names = SegmentNames(10, 60, clock=clock)
    names.remember(1, 99, name("a"))
    clock.advance(61)

    assert names.get(1, 99) is None
    assert names.evictions.idle == 1


def test_forget_stream_after_an_eviction_leaves_the_other_names() -> None:
    names = SegmentNames(2, 60, clock=FakeClock())
    names.remember(1, 1, name("a"))
    names.remember(2, 2, name("b"))
    names.remember(2, 3, name("c"))  # evicts (1, 1)

    names.forget_stream(1)
    names.forget_stream(2)

    assert len(names) == 0
    assert names.evictions.capacity == 1


def test_forget_stream_removes_a_name_remembered_again_after_it_went_idle() -> None:
    clock = FakeClock()
    names = SegmentNames(10, 60, clock=clock)
    names.remember(1, 99, name("first"))
    clock.advance(61)
    names.remember(1, 99, name("second"))

    names.forget_stream(1)

    assert names.get(1, 99) is None
    assert len(names) == 0


def test_one_streams_churn_does_not_evict_another_streams_names() -> None:
    """Many segments on one stream (the red team sent 101,000) used to push out a quiet
    stream's transaction, whose next segment was then written under another name."""
    names = SegmentNames(100, 600, clock=FakeClock())
    names.remember(1, 7, name("quiet"))
    for trace_id in range(20_000):
        names.remember(2, trace_id, name("busy"))
    assert names.get(1, 7) == name("quiet")
    assert len(names) <= 100
    assert names.get(2, 19_999) == name("busy")


def test_a_stream_within_its_share_still_evicts_the_oldest_in_all() -> None:
    names = SegmentNames(4, 600, clock=FakeClock())
    for stream in range(1, 5):
        names.remember(stream, 1, name(str(stream)))
    names.remember(5, 1, name("5"))  # holds nothing yet: the globally oldest goes
    assert names.get(1, 1) is None
    assert [names.get(s, 1) for s in range(2, 6)] == [name(str(s)) for s in range(2, 6)]


# --- model-based ------------------------------------------------------------------------

CAP = 4
IDLE_SECONDS = 10.0


class CorrelationMachine(RuleBasedStateMachine):
    """SegmentNames and SequenceCounter against a simple model, with a hand-moved clock.

    While a stem is tracked its numbers go 1, 2, 3... with no gap and no repeat; once
    forgotten it starts again at 1 (the writers move it past what is on disk).
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.names = SegmentNames(CAP, IDLE_SECONDS, clock=self.clock)
        self.last: dict[str, int] = {}
        self.sequences = SequenceCounter(CAP, IDLE_SECONDS, clock=self.clock)
        # The last name remembered per key that has not been forgotten with its stream; the
        # real map may have evicted it, but may never answer with anything else.
        self.remembered: dict[tuple[int, int], TraceName] = {}
        self.tracked_last: dict[str, int] = {}

    @rule(stream=st.integers(0, 2), trace_id=st.integers(0, 3), prefix=st.sampled_from("xyz"))
    def remember(self, stream: int, trace_id: int, prefix: str) -> None:
        self.names.remember(stream, trace_id, name(prefix))
        self.remembered[(stream, trace_id)] = name(prefix)

    @rule(stream=st.integers(0, 2), trace_id=st.integers(0, 3))
    def lookup(self, stream: int, trace_id: int) -> None:
        found = self.names.get(stream, trace_id)
        assert found is None or found == self.remembered.get((stream, trace_id))

    @precondition(lambda self: self.remembered)
    @rule(data=st.data(), prefix=st.sampled_from("xyz"))
    def remember_again(self, data: st.DataObject, prefix: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.remembered)))
        self.remember(*key, prefix)

    @precondition(lambda self: self.remembered)
    @rule(data=st.data())
    def forget_a_known_stream(self, data: st.DataObject) -> None:
        self.forget_stream(data.draw(st.sampled_from(sorted({key[0] for key in self.remembered}))))

    @precondition(lambda self: self.remembered)
    @rule(data=st.data())
    def lookup_remembered(self, data: st.DataObject) -> None:
        stream, trace_id = data.draw(st.sampled_from(sorted(self.remembered)))
        found = self.names.get(stream, trace_id)
        assert found is None or found == self.remembered[(stream, trace_id)]

    @rule(stem=st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6"]))
    def next_sequence(self, stem: str) -> None:
        sequence = self.sequences.next(stem)
        assert sequence in (1, self.last.get(stem, 0) + 1)
        self.last[stem] = sequence

    @rule(seconds=st.sampled_from([0.0, 0.5, 3.0, IDLE_SECONDS - 0.1, IDLE_SECONDS, 25.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(stream=st.integers(0, 2))
    def forget_stream(self, stream: int) -> None:
        before = self.names.evictions.total
        self.names.forget_stream(stream)
        assert self.names.evictions.total == before
        for key in [key for key in self.remembered if key[0] == stream]:
            del self.remembered[key]
        for trace_id in range(4):
            assert self.names.get(stream, trace_id) is None

    @invariant()
    def segment_names_stay_within_their_bound(self) -> None:
        assert len(self.names) <= CAP

    @invariant()
    def sequence_stems_stay_within_their_bound(self) -> None:
        assert len(self.sequences) <= CAP

    @invariant()
    def nothing_is_held_that_was_not_remembered(self) -> None:
        assert len(self.names) <= len(self.remembered)


CorrelationMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None
)
test_correlation_state_machine = CorrelationMachine.TestCase
