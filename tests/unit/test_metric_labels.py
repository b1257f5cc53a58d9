"""Every member of every closed set has its metric series: a new outcome, reason or kind can
never meet a missing label child (which would end every stream INTERNAL)."""

from __future__ import annotations

import itertools

from tap_emulator.labels import (
    FALLBACK_KINDS,
    BodyHalf,
    Direction,
    RejectReason,
    Source,
    StreamOutcome,
    TraceKind,
    TransactionDrop,
    TransactionOutcome,
    WriteErrorReason,
)
from tap_emulator.observe.metrics import Metrics

MESSAGE_REASONS = set(RejectReason) - {RejectReason.STREAM_LIMIT, RejectReason.PEER_LIMIT}


def test_every_label_set_is_built_from_its_enum() -> None:
    metrics = Metrics()
    assert set(metrics.streams_ended) == set(itertools.product(Source, StreamOutcome))
    assert set(metrics.messages_received) == set(itertools.product(Source, TraceKind, Direction))
    assert set(metrics.messages_rejected) == set(itertools.product(Source, MESSAGE_REASONS))
    refusals = {RejectReason.STREAM_LIMIT, RejectReason.PEER_LIMIT}
    assert set(metrics.streams_refused) == set(itertools.product(Source, refusals))
    assert set(metrics.write_errors) == set(WriteErrorReason)
    assert set(metrics.files_dropped) == set(WriteErrorReason)
    assert set(metrics.retention_delete_errors) == set(WriteErrorReason)
    assert set(metrics.fallback_names) == set(FALLBACK_KINDS)
    assert set(metrics.extproc_transactions) == set(TransactionOutcome)
    assert set(metrics.extproc_dropped) == set(TransactionDrop)
    assert set(metrics.extproc_truncated) == set(BodyHalf)
    assert set(metrics.streams_opened) == set(Source) == set(metrics.received_bytes)


def test_the_series_are_exported_under_the_enum_values() -> None:
    metrics = Metrics()
    exported = {
        sample.labels.get("outcome")
        for family in metrics.registry.collect()
        if family.name == "tap_emulator_streams_ended"
        for sample in family.samples
    }
    assert exported == {outcome.value for outcome in StreamOutcome}
