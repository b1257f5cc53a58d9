"""Configuration: one validated Settings object from defaults < YAML file < flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tap_emulator.config import (
    FIELDS,
    ConfigError,
    GiB,
    KiB,
    MiB,
    Settings,
    build_settings,
    load_settings,
)
from tap_emulator.derive.naming import NameFormat
from tap_emulator.forward.policy import WhenFull
from tap_emulator.labels import Direction
from tap_emulator.write.policy import WriteErrorPolicy, WriterMode

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def config_error(*layers: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        build_settings(*layers)
    return str(caught.value)


# --- defaults ---------------------------------------------------------------------------


DOCUMENTED_DEFAULTS: dict[str, object] = {
    "listen": "0.0.0.0:9000",
    "metrics_listen": "0.0.0.0:9090",
    "ui_listen": "127.0.0.1:8080",
    "ui_max_transactions": 10_000,
    "output_dir": Path("/tmp"),
    "writers": 1,
    "writer_batch_max_items": 256,
    "queue_max_items": 10_000,
    "queue_max_bytes": 64 * MiB,
    "writer_mode": WriterMode.AUTO,
    "fsync": False,
    "file_mode": 0o640,
    "name_format": NameFormat.PLAIN,
    "trace_id_headers": ("x-b3-traceid", "b3", "traceparent", "x-trace-id", "x-request-id"),
    "redact_headers": ("authorization", "proxy-authorization", "cookie", "set-cookie"),
    "default_direction": Direction.INBOUND,
    "max_message_bytes": 16 * MiB,
    "max_headers_per_message": 10_000,
    "max_concurrent_streams": 1000,
    "max_streams_per_peer": 100,
    "max_streams_per_connection": 1000,
    "stream_idle_timeout_seconds": 600.0,
    "extproc_max_concurrent_streams": 20_000,
    "extproc_max_streams_per_peer": 5_000,
    "extproc_max_body_bytes": 8 * MiB,
    "extproc_assembly_max_bytes": 256 * MiB,
    "on_write_error": WriteErrorPolicy.BLOCK,
    "tls_cert_file": None,
    "tls_key_file": None,
    "tls_client_ca_file": None,
    "forward_to": "",
    "forward_tls_ca_file": None,
    "forward_tls_cert_file": None,
    "forward_tls_key_file": None,
    "forward_queue_max_items": 10_000,
    "forward_queue_max_bytes": 64 * MiB,
    "forward_when_full": WhenFull.DROP_OLDEST,
    "forward_max_message_bytes": 4 * MiB,
    "forward_max_streams": 1000,
    "correlation_max_entries": 100_000,
    "correlation_idle_seconds": 300.0,
    "drain_timeout_seconds": 20.0,
    "retention_max_bytes": 0,
    "retention_max_files": 0,
    "log_summary_seconds": 60.0,
    "log_level": "info",
    "log_format": "text",
}


def test_every_default_is_the_documented_one() -> None:
    assert set(DOCUMENTED_DEFAULTS) == set(FIELDS), "document the new setting's default here"
    defaults = Settings()
    assert {name: getattr(defaults, name) for name in FIELDS} == DOCUMENTED_DEFAULTS


def test_nothing_given_means_the_defaults() -> None:
    assert load_settings(None, {}) == Settings()


def test_every_setting_has_help_text() -> None:
    assert all(item.metadata.get("help") for item in FIELDS.values())


# --- the YAML file and flags ------------------------------------------------------------


def test_example_file_loads_to_the_expected_settings() -> None:
    loaded = load_settings(FIXTURES / "example.yaml", {})

    assert loaded == Settings(
        listen="127.0.0.1:9100",
        metrics_listen="[::1]:9191",
        ui_listen="127.0.0.1:8181",
        ui_max_transactions=5000,
        output_dir=Path("/var/lib/tap-emulator"),
        writers=4,
        writer_batch_max_items=32,
        queue_max_items=5000,
        queue_max_bytes=128 * MiB,
        writer_mode=WriterMode.THREAD,
        fsync=True,
        file_mode=0o600,
        name_format=NameFormat.REQ_RES,
        trace_id_headers=("traceparent", "x-b3-traceid", "x-request-id"),
        redact_headers=("authorization", "cookie", "x-api-key"),
        default_direction=Direction.OUTBOUND,
        max_message_bytes=32 * MiB,
        max_headers_per_message=2000,
        max_concurrent_streams=200,
        max_streams_per_peer=20,
        max_streams_per_connection=50,
        stream_idle_timeout_seconds=900.0,
        extproc_max_concurrent_streams=8000,
        extproc_max_streams_per_peer=2000,
        extproc_max_body_bytes=2 * MiB,
        extproc_assembly_max_bytes=64 * MiB,
        on_write_error=WriteErrorPolicy.DROP,
        tls_cert_file=Path("/etc/tap-emulator/tls/tls.crt"),
        tls_key_file=Path("/etc/tap-emulator/tls/tls.key"),
        tls_client_ca_file=Path("/etc/tap-emulator/tls/ca.crt"),
        forward_to="analysis-tool.tools.svc.cluster.local:9000",
        forward_tls_ca_file=Path("/etc/tap-emulator/forward-tls/ca.crt"),
        forward_tls_cert_file=Path("/etc/tap-emulator/forward-tls/tls.crt"),
        forward_tls_key_file=Path("/etc/tap-emulator/forward-tls/tls.key"),
        forward_queue_max_items=20_000,
        forward_queue_max_bytes=32 * MiB,
        forward_when_full=WhenFull.DROP_NEWEST,
        forward_max_message_bytes=8 * MiB,
        forward_max_streams=200,
        correlation_max_entries=50_000,
        correlation_idle_seconds=120.0,
        drain_timeout_seconds=45.5,
        retention_max_bytes=10 * GiB,
        retention_max_files=100_000,
        log_summary_seconds=15.0,
        log_level="debug",
        log_format="json",
    )


def test_example_file_sets_every_setting_to_other_than_its_default() -> None:
    written = yaml.safe_load((FIXTURES / "example.yaml").read_text())
    loaded = load_settings(FIXTURES / "example.yaml", {})

    assert set(written) == set(FIELDS)
    changed = {
        item.name
        for item in dataclasses.fields(Settings)
        if getattr(loaded, item.name) != getattr(Settings(), item.name)
    }
    assert changed == set(FIELDS)


def test_empty_file_means_the_defaults(tmp_path: Path) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("# nothing set\n")

    assert load_settings(config, {}) == Settings()


def test_flags_override_the_file() -> None:
    loaded = load_settings(
        FIXTURES / "example.yaml", {"writers": "8", "listen": "0.0.0.0:7000", "fsync": "false"}
    )

    assert loaded.writers == 8
    assert loaded.listen == "0.0.0.0:7000"
    assert loaded.fsync is False


def test_flags_keep_what_they_do_not_name_from_the_file() -> None:
    loaded = load_settings(FIXTURES / "example.yaml", {"writers": "8"})

    assert loaded.output_dir == Path("/var/lib/tap-emulator")
    assert loaded.name_format is NameFormat.REQ_RES


def test_later_layers_override_earlier_ones() -> None:
    assert build_settings({"writers": 3}, {"writers": 5}).writers == 5


# --- unknown keys -----------------------------------------------------------------------


def test_unknown_key_names_the_key_and_the_close_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(FIXTURES / "typo.yaml", {})

    message = str(caught.value)
    assert "max_mesage_bytes" in message
    assert "did you mean 'max_message_bytes'" in message


def test_unknown_key_with_nothing_close_is_still_named() -> None:
    message = config_error({"zzz_nothing_like_it": 1})

    assert "zzz_nothing_like_it" in message
    assert "did you mean" not in message


def test_unknown_flag_layer_key_is_rejected_too() -> None:
    assert "bogus_flag" in config_error({}, {"bogus_flag": "1"})


# --- invalid values: the message starts with the setting's name -------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("writers", 0),
        ("writers", 65),
        ("writers", "two"),
        ("writers", True),
        ("writers", 2.5),
        ("writer_batch_max_items", 0),
        ("queue_max_items", 0),
        ("queue_max_bytes", 1024),
        ("queue_max_bytes", "1KiB"),
        ("queue_max_bytes", "64 MB"),
        ("queue_max_bytes", "-5"),
        ("listen", "0.0.0.0"),
        ("listen", "localhost:"),
        ("listen", "localhost:http"),
        ("listen", "0.0.0.0:70000"),
        ("listen", "::1:9000"),
        ("listen", "[not-an-ip]:9000"),
        ("listen", 9000),
        ("metrics_listen", "nowhere"),
        ("name_format", "fancy"),
        ("name_format", 3),
        ("default_direction", "sideways"),
        ("log_level", "verbose"),
        ("log_format", "xml"),
        ("file_mode", "0999"),
        ("file_mode", "rw-r-----"),
        ("file_mode", 0o1777),
        ("fsync", "maybe"),
        ("output_dir", ""),
        ("output_dir", 5),
        ("trace_id_headers", "X B3"),
        ("redact_headers", {"authorization": True}),
        ("max_message_bytes", 10),
        ("max_concurrent_streams", 0),
        ("correlation_max_entries", 0),
        ("correlation_idle_seconds", 0),
        ("correlation_idle_seconds", "soon"),
        ("drain_timeout_seconds", -1),
        ("drain_timeout_seconds", [1]),
        ("retention_max_bytes", -1),
        ("retention_max_files", "many"),
    ],
)
def test_invalid_value_error_starts_with_the_setting_name(setting: str, value: Any) -> None:
    assert config_error({setting: value}).startswith(f"{setting}:")


def test_invalid_value_in_a_file_names_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("writers: 0\n")

    with pytest.raises(ConfigError, match=r"^writers: "):
        load_settings(config, {})


def test_invalid_flag_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^writers: "):
        load_settings(FIXTURES / "example.yaml", {"writers": "0"})


def test_non_mapping_file_is_rejected_naming_the_file() -> None:
    path = FIXTURES / "not_a_mapping.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert str(caught.value).startswith("config file")
    assert str(path) in str(caught.value)


def test_invalid_yaml_is_rejected_naming_the_file() -> None:
    path = FIXTURES / "invalid.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert str(caught.value).startswith("config file")
    assert str(path) in str(caught.value)


def test_missing_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert str(caught.value).startswith("config file")
    assert str(path) in str(caught.value)


def test_unreadable_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    # Root reads through chmod 000 (design.md, Tests run as root); a directory cannot be read
    # as text.
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path, {})

    assert str(caught.value).startswith("config file")
    assert str(tmp_path) in str(caught.value)


# --- value forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * MiB),
        ("64 MiB", 64 * MiB),
        ("64mib", 64 * MiB),
        ("64M", 64 * MiB),
        ("512KiB", 512 * KiB),
        ("1GiB", GiB),
        ("1048576", MiB),
        (2 * MiB, 2 * MiB),
    ],
)
def test_sizes_may_carry_a_binary_unit(text: str | int, expected: int) -> None:
    assert build_settings({"queue_max_bytes": text}).queue_max_bytes == expected


def test_file_mode_string_is_octal() -> None:
    assert build_settings({"file_mode": "0600"}).file_mode == 0o600


def test_file_mode_bare_yaml_octal_is_octal(tmp_path: Path) -> None:
    config = tmp_path / "mode.yaml"
    config.write_text("file_mode: 0600\n")

    assert load_settings(config, {}).file_mode == 0o600


def test_comma_separated_list_is_split_trimmed_and_lowercased() -> None:
    loaded = build_settings({"redact_headers": "Authorization, cookie ,X-Api-Key"})

    assert loaded.redact_headers == ("authorization", "cookie", "x-api-key")


def test_yaml_list_is_accepted_for_headers() -> None:
    loaded = build_settings({"trace_id_headers": ["x-request-id", "X-B3-TraceId"]})

    assert loaded.trace_id_headers == ("x-request-id", "x-b3-traceid")


def test_empty_string_empties_the_redaction_list() -> None:
    assert build_settings({"redact_headers": ""}).redact_headers == ()


def test_null_empties_the_redaction_list(tmp_path: Path) -> None:
    config = tmp_path / "none.yaml"
    config.write_text("redact_headers:\n")

    assert load_settings(config, {}).redact_headers == ()


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("off", False), ("YES", True)])
def test_boolean_words_are_accepted(text: str, expected: bool) -> None:
    assert build_settings({"fsync": text}).fsync is expected


def test_enum_values_are_case_insensitive() -> None:
    loaded = build_settings({"name_format": "REQ_RES", "default_direction": "Outbound"})

    assert loaded.name_format is NameFormat.REQ_RES
    assert loaded.default_direction is Direction.OUTBOUND


def test_log_level_is_case_insensitive() -> None:
    assert build_settings({"log_level": "WARNING"}).log_level == "warning"


def test_bracketed_ipv6_listen_address_is_accepted() -> None:
    assert build_settings({"listen": "[::]:9000"}).listen == "[::]:9000"


def test_empty_metrics_listen_disables_the_endpoint() -> None:
    assert build_settings({"metrics_listen": ""}).metrics_listen == ""


def test_port_0_is_accepted() -> None:
    assert build_settings({"listen": "127.0.0.1:0"}).listen == "127.0.0.1:0"


# --- cross-checks -----------------------------------------------------------------------


def test_correlation_entries_equal_to_queue_plus_writer_batches_are_enough() -> None:
    loaded = build_settings(
        {
            "queue_max_items": 1000,
            "writers": 4,
            "writer_batch_max_items": 50,
            "correlation_max_entries": 1200,
        }
    )

    assert loaded.correlation_max_entries == 1200


def test_correlation_entries_below_queue_plus_writer_batches_are_rejected() -> None:
    message = config_error(
        {
            "queue_max_items": 1000,
            "writers": 4,
            "writer_batch_max_items": 50,
            "correlation_max_entries": 1199,
        }
    )

    assert message.startswith("correlation_max_entries:")
    assert "1200" in message


def test_raising_the_queue_alone_past_the_correlation_bound_is_rejected() -> None:
    assert config_error({"queue_max_items": 200_000}).startswith("correlation_max_entries:")


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().writers = 3  # type: ignore[misc]


# --- forwarding and the pure bridge -------------------------------------------------------


def test_empty_output_dir_with_forward_to_is_a_pure_bridge() -> None:
    loaded = build_settings({"output_dir": "", "forward_to": "tool.tools.svc.cluster.local:9000"})
    assert loaded.output_dir is None
    assert loaded.forward_to == "tool.tools.svc.cluster.local:9000"


def test_empty_output_dir_without_forward_to_is_refused_as_doing_nothing() -> None:
    message = config_error({"output_dir": ""})
    assert message.startswith("output_dir:")
    assert "forward_to" in message


def test_forward_to_must_be_host_and_port() -> None:
    assert config_error({"forward_to": "tool.tools.svc"}).startswith("forward_to:")


def test_forward_client_certificate_needs_its_key() -> None:
    message = config_error(
        {"forward_to": "127.0.0.1:9000", "forward_tls_cert_file": "/etc/tls/tls.crt"}
    )
    assert message.startswith("forward_tls_cert_file:")


def test_forward_tls_files_without_forward_to_are_refused() -> None:
    message = config_error({"forward_tls_ca_file": "/etc/tls/ca.crt"})
    assert message.startswith("forward_tls_ca_file:")
    assert "forward_to" in message


@pytest.mark.parametrize("policy", ["drop_oldest", "DROP_NEWEST"])
def test_forward_when_full_takes_either_policy(policy: str) -> None:
    loaded = build_settings({"forward_to": "127.0.0.1:9000", "forward_when_full": policy})
    assert loaded.forward_when_full is WhenFull(policy.lower())


def test_forward_when_full_names_the_choices_when_wrong() -> None:
    message = config_error({"forward_when_full": "block"})
    assert message.startswith("forward_when_full:")
    assert "drop_oldest" in message
