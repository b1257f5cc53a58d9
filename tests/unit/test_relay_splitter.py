"""The JSON object splitter the relay reads Envoy's admin stream with: it finds every object
however the stream is cut, keeps no more than its bound, gives up on an object as soon as
it is over the bound (counting it at once), and finds the next object after it."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tap_emulator.captures.json_objects import JsonObjectSplitter
from tests.helpers.fake_envoy_admin import ADMIN_SAMPLE, admin_sample_objects


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(min_value=0, max_value=10**6), max_size=200))
def test_splitter_finds_every_object_of_the_admin_sample_however_it_is_cut(
    cuts: list[int],
) -> None:
    expected = admin_sample_objects()
    data = ADMIN_SAMPLE.read_bytes()
    splitter = JsonObjectSplitter(max_object_bytes=64 * 1024)
    found = [obj for piece in pieces_of(data, cuts) for obj in splitter.feed(piece)]
    assert found == expected
    assert not splitter.pending and splitter.dropped == 0 and splitter.stray_bytes == 0


_TRICKY_TEXT = st.text(alphabet=st.sampled_from('{}[]"\\ \nab\u00e9\u2028'), max_size=30)
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TRICKY_TEXT, inner, max_size=4),
    max_leaves=20,
)


@given(
    st.lists(st.dictionaries(_TRICKY_TEXT, _VALUES, max_size=5), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=60),
    st.booleans(),
)
def test_splitter_ignores_braces_quotes_and_escapes_inside_strings(
    documents: list[dict[str, Any]], cuts: list[int], pretty: bool
) -> None:
    encoded = [
        json.dumps(d, indent=1 if pretty else None, ensure_ascii=False).encode() for d in documents
    ]
    splitter = JsonObjectSplitter(max_object_bytes=1 << 20)
    found = [obj for piece in pieces_of(b"\n".join(encoded), cuts) for obj in splitter.feed(piece)]
    assert [json.loads(obj) for obj in found] == documents


def test_splitter_skips_an_object_over_the_bound_without_keeping_it() -> None:
    small = b'{"a": "x"}'
    large = b'{"a": "' + b"y" * 10_000 + b'"}'
    splitter = JsonObjectSplitter(max_object_bytes=1000)
    found = []
    most = 0
    for piece in pieces_of(small + large + small, list(range(0, 20_000, 100))):
        found += splitter.feed(piece)
        most = max(most, splitter.buffered_bytes)
    assert found == [small, small]
    assert splitter.dropped == 1
    assert most <= 1000 + 100


def test_splitter_gives_up_on_an_object_as_soon_as_it_is_over_the_bound() -> None:
    """Counted at once, before its end has arrived, and nothing of it is kept, however
    large the piece that carried it past the bound."""
    splitter = JsonObjectSplitter(max_object_bytes=1000)
    assert splitter.feed(b'{"a": "' + b"y" * 50_000) == []
    assert splitter.dropped == 1
    assert splitter.buffered_bytes <= 1000
    assert splitter.feed(b'"}\n{"b": 1}') == [b'{"b": 1}']
    assert splitter.dropped == 1


def test_splitter_counts_stray_bytes_between_objects() -> None:
    splitter = JsonObjectSplitter(max_object_bytes=100)
    assert splitter.feed(b'junk {"a": 1}\n\n ]{"b": 2}') == [b'{"a": 1}', b'{"b": 2}']
    assert splitter.stray_bytes == len("junk") + 1


def test_splitter_reports_an_object_cut_short_on_reset() -> None:
    splitter = JsonObjectSplitter(max_object_bytes=100)
    assert splitter.feed(b'{"a": {"b": ') == []
    assert splitter.reset() is True
    assert splitter.feed(b'{"c": 3}') == [b'{"c": 3}']


def test_an_object_heavy_with_values_is_given_up_long_before_its_length_is_reached() -> None:
    """`[]` is 2 bytes of text and about 60 once parsed: the weight counts that."""
    splitter = JsonObjectSplitter(max_object_bytes=64 * 1024, value_cost_bytes=64)
    found = splitter.feed(b'{"a": [' + b"[]," * 2_000)
    assert found == [] and splitter.dropped == 1
    assert splitter.buffered_bytes == 0
    assert splitter.feed(b'[]]}{"b": [1, 2]}') == [b'{"b": [1, 2]}']


def test_commas_count_as_values_once_an_object_is_complete() -> None:
    numbers = b'{"a": [' + b"1," * 1_000 + b"1]}"
    assert JsonObjectSplitter(64 * 1024).feed(numbers) == [numbers]
    heavy = JsonObjectSplitter(64 * 1024, value_cost_bytes=64)
    assert heavy.feed(numbers) == [] and heavy.dropped == 1


def test_a_heavy_object_is_skipped_in_bulk_and_the_next_one_is_found() -> None:
    splitter = JsonObjectSplitter(max_object_bytes=64 * 1024, value_cost_bytes=64)
    nested = b'{"h": [' + b"{},{{}},{{{}}}," * 100_000 + b'{"a": "}"}]}'
    found = []
    for piece in pieces_of(nested + b'{"next": 1}', list(range(0, len(nested), 65536))):
        found += splitter.feed(piece)
    assert found == [b'{"next": 1}']
    assert splitter.dropped == 1 and not splitter.pending


_DOCUMENT = st.dictionaries(_TRICKY_TEXT, _VALUES, max_size=5)


@given(
    st.lists(st.tuples(_DOCUMENT, st.booleans()), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=10**6), max_size=60),
)
def test_objects_around_a_skipped_one_are_all_found(
    documents: list[tuple[dict[str, Any], bool]], cuts: list[int]
) -> None:
    """Some objects are padded past the bound (with braces, brackets and commas outside
    strings, and a string full of them): exactly the others come out, however cut."""
    padding = b"[" + b"{}, [], {" * 300 + b"}" * 300 + b', "{[}]\\\\\\""]'
    encoded = []
    for document, heavy in documents:
        text = json.dumps(document).encode()
        encoded.append(b'{"pad": ' + padding + b", " + text[1:] if heavy else text)
    splitter = JsonObjectSplitter(max_object_bytes=2048, value_cost_bytes=1)
    found = [obj for piece in pieces_of(b"\n".join(encoded), cuts) for obj in splitter.feed(piece)]
    assert [json.loads(obj) for obj in found] == [d for d, heavy in documents if not heavy]
    assert splitter.dropped == sum(heavy for _, heavy in documents)
