"""The page's index: the transactions it can show, each with a number and its row's JSON
made once, bounded to `max_transactions`.

Which ones are kept past the bound: `arrival` (the live page) keeps the latest to have
arrived and forgets the first; `newest` (`browse`, which reads a directory in directory
order) keeps the newest by time. An update of a transaction (an open one that gains pieces)
keeps its number and its place. When the two halves of a buffered trace (`req_res` names)
meet, the transaction they make takes over the row of the half seen first.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from tap_emulator.captures.model import Transaction
from tap_emulator.web.rows import RowFilter, row_json


class Keep(StrEnum):
    ARRIVAL = "arrival"
    NEWEST = "newest"


@dataclass(slots=True)
class Entry:
    number: int
    transaction: Transaction
    json: str


@dataclass(slots=True)
class Change:
    """What one round of updates did: rows to add or replace, numbers of rows now gone."""

    rows: dict[int, str] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.rows or self.gone)

    def merge(self, later: Change) -> None:
        for number in later.gone:
            self.rows.pop(number, None)
            self.gone.add(number)
        for number, text in later.rows.items():
            self.gone.discard(number)
            self.rows[number] = text


def _time_of(transaction: Transaction) -> float:
    return transaction.time if transaction.time is not None else -math.inf


class TransactionIndex:
    """At most `max_transactions` transactions, by number and by the reader's key."""

    def __init__(self, max_transactions: int, keep: Keep = Keep.ARRIVAL) -> None:
        if max_transactions < 1:
            raise ValueError("max_transactions must be at least 1")
        self.max_transactions = max_transactions
        self.keep = keep
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._numbers: dict[str, int] = {}  # the reader's key -> number
        self._by_time: list[tuple[float, int]] = []  # Keep.NEWEST: a heap of (time, number)
        self._next_number = 1
        self.version = 0  # counts changes, so a page can tell a snapshot from later events
        self.forgotten = 0  # transactions dropped to stay within the bound

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, number: int) -> Transaction | None:
        entry = self._entries.get(number)
        return None if entry is None else entry.transaction

    def entries(self) -> Iterable[Entry]:
        """Every entry, oldest first."""
        return self._entries.values()

    def rows_json(self) -> list[str]:
        """Every row's JSON, oldest first."""
        return [entry.json for entry in self._entries.values()]

    def select(self, wanted: RowFilter) -> list[Transaction]:
        return [e.transaction for e in self._entries.values() if wanted.matches(e.transaction)]

    def update(self, transactions: Iterable[Transaction]) -> Change:
        """Take in records the reader returned (new or updated); returns what changed."""
        change = Change()
        for transaction in transactions:
            self._one(transaction, change)
        if change:
            self.version += 1
        return change

    def _one(self, transaction: Transaction, change: Change) -> None:
        number = self._numbers.get(transaction.key)
        if number is None:
            number = self._joined_half(transaction, change)
        if number is None:
            if self.keep is Keep.NEWEST and not self._room_for(transaction):
                self.forgotten += 1
                return
            number = self._next_number
            self._next_number += 1
            if self.keep is Keep.NEWEST:
                heapq.heappush(self._by_time, (_time_of(transaction), number))
        self._numbers[transaction.key] = number
        text = row_json(number, transaction)
        entry = self._entries.get(number)
        if entry is None:
            self._entries[number] = Entry(number, transaction, text)
        else:
            entry.transaction, entry.json = transaction, text
        change.rows[number] = text
        change.gone.discard(number)
        self._forget_over_bound(change)

    def _joined_half(self, transaction: Transaction, change: Change) -> int | None:
        """The row of a buffered half this transaction completes (the reader keys an
        unpaired half by its file, and the pair by both files), or None."""
        if "+" not in transaction.key:
            return None
        taken = None
        for source in transaction.files:
            number = self._numbers.pop(source, None)
            if number is None:
                continue
            if taken is None:
                taken = number
            else:
                self._entries.pop(number, None)
                change.rows.pop(number, None)
                change.gone.add(number)
        return taken

    def _room_for(self, transaction: Transaction) -> bool:
        """Keep.NEWEST when full: room is made by forgetting the oldest, unless this one is
        older still."""
        if len(self._entries) < self.max_transactions:
            return True
        self._drop_stale_heap_tops()
        return bool(self._by_time) and _time_of(transaction) > self._by_time[0][0]

    def _drop_stale_heap_tops(self) -> None:
        while self._by_time and self._by_time[0][1] not in self._entries:
            heapq.heappop(self._by_time)

    def _forget_over_bound(self, change: Change) -> None:
        while len(self._entries) > self.max_transactions:
            if self.keep is Keep.NEWEST:
                self._drop_stale_heap_tops()
                _, number = heapq.heappop(self._by_time)
                entry = self._entries.pop(number)
            else:
                number, entry = self._entries.popitem(last=False)
            if self._numbers.get(entry.transaction.key) == number:
                del self._numbers[entry.transaction.key]
            change.rows.pop(number, None)
            change.gone.add(number)
            self.forgotten += 1
