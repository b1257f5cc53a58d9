"""Text for people: the `list` table (fixed columns, so rows print as they come) and the
`show` view of one transaction (curl -v style: `>` request, `<` response)."""

from __future__ import annotations

import datetime as dt

from tap_emulator.captures.detail import (
    BodyView,
    GrpcMessageView,
    HeaderView,
    MessageView,
    TransactionView,
)
from tap_emulator.captures.model import Missing, Transaction
from tap_emulator.captures.protowire import RawField

# (title, width); a width of 0 is the last, unbounded column.
_COLUMNS = (
    ("TIME (UTC)", 24),
    ("DIR", 4),
    ("METHOD", 7),
    ("AUTHORITY", 34),
    ("PATH", 30),
    ("STATUS", 6),
    ("GRPC", 4),
    ("DURATION", 9),
    ("REQ_B", 7),
    ("RES_B", 7),
    ("TRACE", 32),
    ("FILES", 5),
    ("NOTE", 0),
)
_DIRECTIONS = {"inbound": "in", "outbound": "out"}
_NOTES = {
    Missing.REQUEST: "no-request",
    Missing.REQUEST_HEADERS: "no-request-headers",
    Missing.RESPONSE: "no-response",
    Missing.SEQUENCE_GAP: "gap",
}
TABLE_LEGEND = (
    'TIME ending "~": the file\'s mtime (no time recorded); sizes ending "+": truncated by '
    "the proxy; DIR ?: the file name does not say"
)


def _fit(text: str, width: int) -> str:
    if width == 0:
        return text
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width)


def _row(cells: list[str]) -> str:
    return " ".join(
        _fit(cell, width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True)
    ).rstrip()


def table_header() -> str:
    return _row([title for title, _ in _COLUMNS])


def _time(transaction: Transaction) -> str:
    if transaction.time is None:
        return "-"
    moment = dt.datetime.fromtimestamp(transaction.time, tz=dt.UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return text + ("~" if transaction.time_source == "file_mtime" else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    return f"{seconds:.2f}s"


def _size(size_bytes: int, truncated: bool) -> str:
    return f"{size_bytes}{'+' if truncated else ''}"


def table_row(transaction: Transaction) -> str:
    notes = [_NOTES[item] for item in transaction.missing]
    if transaction.evicted:
        notes.append("evicted")
    if transaction.redacted_headers:
        notes.append("redacted:" + ",".join(transaction.redacted_headers))
    authority = transaction.authority
    return _row(
        [
            _time(transaction),
            _DIRECTIONS.get(transaction.direction, "?"),
            transaction.method or "-",
            "-" if authority is None else (authority or "''"),
            transaction.path or "-",
            str(transaction.status) if transaction.status is not None else "-",
            str(transaction.grpc_status) if transaction.grpc_status is not None else "-",
            _duration(transaction.duration_seconds),
            _size(transaction.request_body_bytes, transaction.request_truncated),
            _size(transaction.response_body_bytes, transaction.response_truncated),
            transaction.trace_id or transaction.name_trace_id or "-",
            str(len(transaction.files)),
            " ".join(notes),
        ]
    )


# --- show -------------------------------------------------------------------------------


def _header_lines(mark: str, headers: list[HeaderView]) -> list[str]:
    lines = []
    for header in headers:
        value = "REDACTED (value removed by the emulator)" if header.redacted else header.value
        lines.append(f"{mark} {header.name}: {value}")
    return lines


def _raw_fields(fields: tuple[RawField, ...], indent: str) -> list[str]:
    lines = []
    for item in fields:
        if item.fields is not None:
            lines.append(f"{indent}{item.number} {{")
            lines.extend(_raw_fields(item.fields, indent + "  "))
            lines.append(f"{indent}}}")
        elif item.text is not None:
            lines.append(f"{indent}{item.number}: {_quoted(item.text)}")
        elif item.data_hex is not None:
            lines.append(f"{indent}{item.number}: 0x{item.data_hex} (bytes)")
        elif item.wire_type == "varint":
            lines.append(f"{indent}{item.number}: {item.number_value}")
        else:
            digits = 16 if item.wire_type == "fixed64" else 8
            lines.append(f"{indent}{item.number}: 0x{item.number_value:0{digits}x}")
    return lines


def _quoted(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _grpc_lines(message: GrpcMessageView) -> list[str]:
    size = f"{message.declared_bytes} bytes"
    if message.captured_bytes < message.declared_bytes:
        size = f"{message.declared_bytes} bytes announced, {message.captured_bytes} captured"
    title = f"[gRPC message {message.index}: {size}"
    if message.type_name:
        title += f", {message.type_name}"
    lines = [title + "]"]
    if message.note:
        lines.append(f"  ({message.note})")
    if message.json is not None:
        lines.extend("  " + line for line in message.json.splitlines())
    elif message.fields is not None:
        lines.extend(_raw_fields(message.fields, "  ") or ["  (empty message)"])
    lines.extend("  " + line for line in message.hex_lines)
    return lines


def _body_lines(body: BodyView) -> list[str]:
    if body.kind == "none":
        return []
    if body.kind == "empty":
        return ["(no body)"]
    lines: list[str] = []
    if body.kind == "grpc":
        for message in body.grpc_messages:
            lines.extend(_grpc_lines(message))
    elif body.text is not None:
        lines.extend(body.text.splitlines() or [""])
    else:
        lines.extend(body.hex_lines)
    facts = [f"{body.kind}", f"{body.size_bytes} bytes captured"]
    if body.declared_bytes is not None and body.declared_bytes != body.size_bytes:
        facts.append(f"content-length {body.declared_bytes}")
    if body.truncated:
        facts.append("TRUNCATED by the proxy")
    if body.hidden_bytes:
        facts.append(f"{body.hidden_bytes} more bytes not shown")
    lines.append("[body: " + ", ".join(facts) + "]")
    return lines


def _message_lines(message: MessageView) -> list[str]:
    mark = ">" if message.side == "request" else "<"
    if not message.recorded:
        return [f"{mark} ({message.side} not recorded)"]
    when = f"    [headers received {message.time}]" if message.time else ""
    lines = [f"{mark} {message.start_line}{when}"]
    lines.extend(_header_lines(mark, message.headers))
    lines.append(mark)
    lines.extend(_body_lines(message.body))
    if message.trailers:
        lines.append(f"{mark} trailers:")
        lines.extend(_header_lines(mark, message.trailers))
    return lines


def render_view(view: TransactionView) -> str:
    """The text `show` prints for one transaction."""
    summary = view.summary
    facts = [f"direction {summary['direction']}"]
    if summary.get("duration_seconds") is not None:
        facts.append(f"{summary['duration_seconds'] * 1000:.3f} ms to response headers")
    trace = summary.get("trace_id") or summary.get("name_trace_id")
    if trace:
        facts.append(f"trace {trace}")
    if summary.get("envoy_trace_id"):
        facts.append(f"envoy id {summary['envoy_trace_id']}")
    lines = [f"=== {view.title}", "    " + "; ".join(facts)]
    lines.append("    files: " + " ".join(summary["files"]))
    lines.extend(f"    ! {note}" for note in view.notes)
    lines.append("")
    lines.extend(_message_lines(view.request))
    lines.append("")
    lines.extend(_message_lines(view.response))
    return "\n".join(lines) + "\n"
