"""`list`, `show`, `export` and the fixed `inspect` and `replay`, as processes: on the real
Envoy vectors, and on a real emulator's own output after replaying the vectors into it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tap_emulator.captures.exchange import load_exchange
from tap_emulator.captures.reader import read_transactions
from tests.helpers.captures import (
    AUTHORITY,
    B3,
    PAIRED_CASES,
    buffered,
    request_headers,
    write_emulator_pieces,
)
from tests.helpers.emulator import published
from tests.helpers.har_schema import assert_valid_har
from tests.helpers.paths import REPO

CAPTURE_DIRS = ("buffered", "streamed", "streamed_raw")


def command(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def command_bytes(where: Path, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """The command run in `where`, its output kept as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "tap_emulator", *map(str, args)],
        capture_output=True,
        timeout=120,
        cwd=where,
        check=False,
    )


# --- list, show, export on the vectors --------------------------------------------------


def test_list_shows_every_vector_transaction_exactly_once(vectors: Path) -> None:
    run = command("list", *(vectors / name for name in CAPTURE_DIRS), "--format", "json")

    assert run.returncode == 0, run.stderr
    rows = json_lines(run.stdout)
    files = [
        str(path)
        for name in CAPTURE_DIRS
        for path in (vectors / name).iterdir()
        if path.suffix in (".pb", ".pb_length_delimited")
    ]
    assert sorted(file for row in rows for file in row["files"]) == sorted(files)
    assert len({row["key"] for row in rows}) == len(rows) == len(files)


def test_list_prints_a_table_and_filters_by_status_trace_and_authority(vectors: Path) -> None:
    table = command("list", vectors / "buffered", "--status", "4xx")
    traced = command(
        "list", vectors / "streamed", "--trace", "custom-trace-0001", "--format", "json"
    )
    by_authority = command("list", vectors / "buffered", "--authority", "grpc-backend.*")

    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["TIME", "(UTC)", "DIR"]
    assert len(rows) == 4 and all(" 400 " in row and "no-request" in row for row in rows)
    [row] = json_lines(traced.stdout)
    assert row["path"] == "/get" and row["trace_id"] == "custom-trace-0001"
    assert len(by_authority.stdout.splitlines()) == 1 + 9  # the nine gRPC vectors


def test_list_sorts_by_time_when_asked(vectors: Path) -> None:
    run = command("list", vectors / "buffered", "--sort", "time", "--format", "json")

    times = [row["time"] for row in json_lines(run.stdout)]
    assert times == sorted(times) and len(times) == 39


def test_since_keeps_what_is_newer_by_recorded_time_or_file_time(
    vectors: Path, tmp_path: Path
) -> None:
    # The buffered vectors were recorded on 2026-11-24; a copied streamed one has no recorded
    # time and is timed by its file's modification time: the copy's, now.
    fresh = tmp_path / "h1_get_b3.pb_length_delimited"
    shutil.copyfile(vectors / "streamed" / fresh.name, fresh)
    recent = command("list", vectors / "buffered", fresh, "--since", "1h", "--format", "json")
    since_then = command(
        "list", vectors / "buffered", fresh, "--since", "2026-11-24T00:00:00Z", "--format", "json"
    )
    later = command("list", vectors / "buffered", "--since", "2026-11-25", "--format", "json")

    assert recent.returncode == since_then.returncode == later.returncode == 0, recent.stderr
    assert [row["files"] for row in json_lines(recent.stdout)] == [[str(fresh)]]
    assert len(json_lines(since_then.stdout)) == 39 + 1
    assert json_lines(later.stdout) == []
    assert "0 of 39 transactions" in later.stderr


def test_show_prints_one_transaction_by_its_trace_id(vectors: Path) -> None:
    run = command("show", vectors / "streamed", "--trace", "custom-trace-0001")

    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("=== GET httpbin-go-httpbin.httpbin-go-httpbin-1-56058.svc")
    assert "> x-trace-id: custom-trace-0001" in run.stdout
    assert "< 200 OK" in run.stdout


def test_show_says_when_nothing_matched(vectors: Path) -> None:
    run = command("show", vectors / "buffered", "--trace", "no-such-trace")

    assert run.returncode == 1
    assert "no transaction matched" in run.stderr


def test_direction_sets_the_unknown_ones_and_keeps_the_known(vectors: Path, tmp_path: Path) -> None:
    # Named by an emulator whose prefix is the authority: inbound, proven by the name.
    answered = buffered(request_headers(), [(":status", "200")])
    [inbound] = write_emulator_pieces(tmp_path, f"{AUTHORITY}-{B3}", [answered])
    envoys = vectors / "buffered"
    plain = command("list", envoys, inbound, "--format", "json")
    told = command("list", envoys, inbound, "--format", "json", "--direction", "outbound")
    shown = command("show", inbound, envoys / "h1_get_b3.pb", "--direction", "outbound")

    assert told.returncode == 0, told.stderr
    direction = {row["files"][0]: row["direction"] for row in json_lines(plain.stdout)}
    told_direction = {row["files"][0]: row["direction"] for row in json_lines(told.stdout)}
    assert direction.pop(str(inbound)) == told_direction.pop(str(inbound)) == "inbound"
    assert len(direction) == 39 and set(direction.values()) == {"unknown"}
    assert told_direction.keys() == direction.keys()
    assert set(told_direction.values()) == {"outbound"}
    facts = [line.split(";")[0].split() for line in shown.stdout.splitlines()]
    assert sorted(words[1] for words in facts if words[:1] == ["direction"]) == [
        "inbound",
        "outbound",
    ]


def test_bad_arguments_are_named(vectors: Path) -> None:
    run = command("list", vectors / "buffered", "--status", "6xx")

    assert run.returncode == 2
    assert "--status '6xx'" in run.stderr


def test_output_dash_is_standard_output_for_har_and_pcap(vectors: Path, tmp_path: Path) -> None:
    source = vectors / "buffered"
    har = command_bytes(tmp_path, "export", "har", source, "-o", "-")
    pcap = command_bytes(tmp_path, "export", "pcap", source, "-o", "-")
    to_file = command_bytes(tmp_path, "export", "pcap", source, "-o", "capture.pcapng")

    assert har.returncode == pcap.returncode == to_file.returncode == 0, har.stderr + pcap.stderr
    assert len(json.loads(har.stdout)["log"]["entries"]) == 39
    assert b"39 entries in standard output" in har.stderr
    assert pcap.stdout[:4] == b"\x0a\x0d\x0d\x0a"  # a pcapng section header block
    assert pcap.stdout == (tmp_path / "capture.pcapng").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["capture.pcapng"]


def test_exports_say_once_how_many_were_written_as_http1_for_want_of_a_version(
    vectors: Path, tmp_path: Path
) -> None:
    plain_h2 = [vectors / "buffered" / f"{name}.pb" for name in ("h2_get_b3", "h2_post_b3")]
    grpc = vectors / "buffered" / "grpc_unary_trailers.pb"  # HTTP/2, as gRPC always is
    har = command("export", "har", *plain_h2, grpc, "-o", tmp_path / "guessed.har")
    pcap = command("export", "pcap", *plain_h2, grpc, "-o", tmp_path / "guessed.pcapng")
    told = command("export", "pcap", *plain_h2, "--http-version", "2", "-o", tmp_path / "h2.pcapng")

    for run in (har, pcap):
        assert run.returncode == 0, run.stderr
        [note] = [line for line in run.stderr.splitlines() if "no recorded HTTP version" in line]
        assert note.split(": ", 1)[1].startswith("2 transactions had no recorded HTTP version")
        assert "written as HTTP/1.1" in note and "--http-version 2" in note
    assert told.returncode == 0 and "no recorded HTTP version" not in told.stderr


def test_export_har_writes_the_http_version_asked_for(vectors: Path) -> None:
    source = vectors / "buffered" / "h2_get_b3.pb"
    guessed = command("export", "har", source, "-o", "-")
    told = command("export", "har", source, "--http-version", "2", "-o", "-")

    [guessed_entry] = json.loads(guessed.stdout)["log"]["entries"]
    [told_entry] = json.loads(told.stdout)["log"]["entries"]
    assert guessed_entry["request"]["httpVersion"] == "HTTP/1.1"
    assert "HTTP version not recorded; HTTP/1.1 assumed" in guessed_entry["comment"]
    assert told_entry["request"]["httpVersion"] == told_entry["response"]["httpVersion"] == "HTTP/2"
    assert "HTTP version not recorded; HTTP/2 as asked" in told_entry["comment"]


# --- the emulator's own output ----------------------------------------------------------


def replay_into(emulator: Any, *paths: Path) -> None:
    for path in paths:
        run = command("replay", path, "--to", emulator.tap, "--json")
        assert run.returncode == 0, run.stderr


def test_the_emulators_output_lists_one_transaction_per_captured_request(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    replay_into(emulator, vectors / "buffered", vectors / "streamed")
    run = command("list", emulator.output_dir, "--format", "json")

    assert run.returncode == 0, run.stderr
    rows = json_lines(run.stdout)
    files = published(emulator.output_dir)
    assert sorted(file for row in rows for file in row["files"]) == sorted(
        str(emulator.output_dir / name) for name in files
    )
    assert len(rows) == 2 * len(PAIRED_CASES)
    shared = f"{AUTHORITY}-{B3}"
    on_shared_stem = [r for r in rows if Path(r["files"][0]).name.startswith(shared + "-")]
    assert len({r["envoy_trace_id"] for r in on_shared_stem if r["streamed"]}) > 10
    assert all(r["direction"] == "inbound" for r in on_shared_stem)
    rejected = [r for r in rows if r["status"] == 400]
    assert len(rejected) == 8 and all(r["missing"] == ["request"] for r in rejected)


def test_streamed_pieces_from_the_emulator_carry_the_bodies_of_envoys_file(
    start_emulator: Any, vectors: Path
) -> None:
    emulator = start_emulator()
    source = vectors / "streamed" / "grpc_bidi.pb_length_delimited"
    replay_into(emulator, source)
    [from_emulator] = list(read_transactions([emulator.output_dir]))
    [from_envoy] = list(read_transactions([source]))
    ours, envoys = load_exchange(from_emulator), load_exchange(from_envoy)

    assert len(from_emulator.files) == len(from_envoy.pieces) == 9
    assert ours.request.body == envoys.request.body
    assert ours.response.body == envoys.response.body
    assert from_emulator.grpc_status == 0 and from_emulator.complete
    show = command("show", emulator.output_dir)
    assert show.returncode == 0, show.stderr
    assert '  1: "pong:c"' in show.stdout


def test_req_res_halves_from_the_emulator_pair_up_again(start_emulator: Any, vectors: Path) -> None:
    emulator = start_emulator("--name-format", "req_res")
    replay_into(emulator, vectors / "buffered" / "h1_post_large_b3.pb")
    [transaction] = list(read_transactions([emulator.output_dir]))

    har = command("export", "har", emulator.output_dir, "-o", "-")

    assert transaction.complete and len(transaction.files) == 2
    assert {Path(f).name.rsplit("-", 2)[1] for f in transaction.files} == {"req", "res"}
    assert transaction.request_body_bytes == transaction.response_body_bytes == 1024
    assert har.returncode == 0, har.stderr
    assert_valid_har(json.loads(har.stdout))
    [entry] = json.loads(har.stdout)["log"]["entries"]
    assert sorted(entry["_tapEmulator"]["files"]) == sorted(transaction.files)
