"""Face: the one validated settings object, loaded from YAML and overridden by flags.

Every setting is a field of `Settings` with its default, unit and help text beside it; the
command line offers each one as `--name-with-dashes`, `docs/settings.md` is generated from
the same table, and a config file may use only these names (a typo is an error that says
what was meant). Values are validated once, at start, with the setting's name in the error.

The machinery (`setting`, `add_setting_flags`, `build_table`, the checks) serves any such
table: `tap-emulator relay` builds its flags from its own. A field's metadata holds its
`help` and may say how it is shown and parsed: `octal`, `size` (default shown in KiB, MiB or
GiB), `choices`, `metavar`, `flags` (its option strings), `group` (its heading in --help),
`switch` (a bool given as valueless flags: {option: (value, help)}), `repeatable`, `shown`
(the default as text) and `parse` (a converter `(name, value) -> value` replacing the one
chosen by the field's type).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tap_emulator.derive.naming import DEFAULT_TRACE_ID_HEADERS, NameFormat
from tap_emulator.derive.redact import DEFAULT_REDACT_HEADERS
from tap_emulator.forward.policy import WhenFull
from tap_emulator.labels import Direction
from tap_emulator.netaddr import split_address
from tap_emulator.write.policy import WriteErrorPolicy, WriterMode

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


class ConfigError(Exception):
    """A setting is missing, unknown or invalid; raised before anything starts."""


def setting(default: Any, help: str, **extra: Any) -> Any:
    """A field of a settings table: its default, its help text and how it is shown."""
    return field(default=default, metadata={"help": help, **extra})


def required_setting(help: str, **extra: Any) -> Any:
    """A field of a settings table with no default: its flag must be given."""
    return field(metadata={"help": help, **extra})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything `tap-emulator serve` can be told; defaults are the embedded ones."""

    listen: str = setting(
        "0.0.0.0:9000",
        "HOST:PORT of the gRPC port: Envoy's TapSinkService and ExternalProcessor (port 0: any)",
    )
    metrics_listen: str = setting(
        "0.0.0.0:9090",
        "HOST:PORT of the HTTP endpoint for /metrics, /healthz and /readyz ('' disables it)",
    )
    ui_listen: str = setting(
        "127.0.0.1:8080",
        "HOST:PORT of the read-only web page that shows captures as they land; loopback by "
        "default, since it shows captured bodies ('' disables it)",
    )
    ui_max_transactions: int = setting(
        10_000, "most recent transactions the web page's index holds (and the page shows)"
    )
    # The user guide's contract: files land in /tmp unless told otherwise.
    output_dir: Path | None = setting(
        Path("/tmp"),  # noqa: S108
        "directory the .pb files are published in ('' writes no files: a pure bridge to "
        "forward_to)",
    )
    writers: int = setting(
        1, "writer tasks publishing batches in parallel (2-4 pay off only with fsync on a disk)"
    )
    writer_batch_max_items: int = setting(
        256, "most files a writer publishes in one batch (one hand-over to its thread)"
    )
    queue_max_items: int = setting(10_000, "writer queue bound in files (queued or being written)")
    queue_max_bytes: int = setting(
        64 * MiB, "writer queue bound in bytes; a full queue stops reading the streams"
    )
    writer_mode: WriterMode = setting(
        WriterMode.AUTO,
        "auto: on a memory-backed output_dir (tmpfs) publish on the event loop, on any other "
        "file system in writer threads; thread: always in writer threads",
    )
    fsync: bool = setting(False, "fsync each file, and the directory after each batch")
    file_mode: int = setting(0o640, "permission bits of published files (octal)", octal=True)
    name_format: NameFormat = setting(
        NameFormat.PLAIN,
        "plain: <prefix>-<traceId>-<seq>.pb; req_res: <prefix>-<traceId>-<req|res>-<seq>.pb",
    )
    trace_id_headers: tuple[str, ...] = setting(
        DEFAULT_TRACE_ID_HEADERS,
        "headers tried in order for a trace id; Envoy's numeric id (hex) when none is valid",
    )
    redact_headers: tuple[str, ...] = setting(
        DEFAULT_REDACT_HEADERS, "headers whose values are replaced by REDACTED ('' for none)"
    )
    default_direction: Direction = setting(
        Direction.INBOUND, "direction of streams whose tap_id ends in neither inbound nor outbound"
    )
    max_message_bytes: int = setting(16 * MiB, "largest StreamTapsRequest accepted")
    max_headers_per_message: int = setting(
        10_000,
        "most headers, trailers and other repeated entries a message may hold (checked on the "
        "wire before decoding, for messages over 64 KiB)",
    )
    max_concurrent_streams: int = setting(1000, "StreamTaps calls served at once, in all")
    max_streams_per_peer: int = setting(
        100, "StreamTaps calls one peer address may hold at once (its share of the slots)"
    )
    max_streams_per_connection: int = setting(
        1000, "streams one HTTP/2 connection may open (advertised in SETTINGS)"
    )
    stream_idle_timeout_seconds: float = setting(
        600.0, "end a stream that carried no trace this long with UNAVAILABLE (0: never)"
    )
    extproc_max_concurrent_streams: int = setting(
        20_000,
        "ext_proc Process streams served at once, in all (one per HTTP transaction in flight)",
    )
    extproc_max_streams_per_peer: int = setting(
        5_000, "ext_proc streams one peer address (one proxy) may hold at once"
    )
    extproc_max_body_bytes: int = setting(
        8 * MiB,
        "most body bytes kept per direction of an ext_proc transaction, whatever the filter "
        "asks (x-tap-max-buffered-rx/tx-bytes); the rest is cut and marked truncated",
    )
    extproc_assembly_max_bytes: int = setting(
        256 * MiB,
        "body bytes held for every ext_proc transaction still being assembled; beyond it new "
        "transactions are dropped whole and counted",
    )
    on_write_error: WriteErrorPolicy = setting(
        WriteErrorPolicy.BLOCK,
        "block: retry until the disk recovers, holding senders back; drop: count and drop",
        metavar="POLICY",
    )
    tls_cert_file: Path | None = setting(
        None, "PEM certificate chain: serve TLS on the tap port (plaintext when unset)"
    )
    tls_key_file: Path | None = setting(None, "PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = setting(
        None, "PEM CA bundle: require client certificates signed by it (mutual TLS)"
    )
    forward_to: str = setting(
        "",
        "HOST:PORT of a TapSinkService (a network analysis tool) to stream every accepted "
        "trace to, one stream per sender ('' : off)",
        metavar="HOST:PORT",
        shown="off",
    )
    forward_tls_ca_file: Path | None = setting(
        None,
        "PEM CA bundle the forward_to server's certificate must chain to; any forward_tls_* "
        "file turns TLS on (plaintext when none is set; the system's CAs without this one)",
    )
    forward_tls_cert_file: Path | None = setting(
        None, "PEM client certificate chain presented to forward_to (mutual TLS)"
    )
    forward_tls_key_file: Path | None = setting(None, "PEM private key of forward_tls_cert_file")
    forward_queue_max_items: int = setting(
        10_000, "traces waiting for forward_to at most, over all senders"
    )
    forward_queue_max_bytes: int = setting(
        64 * MiB, "bytes of the traces waiting for forward_to at most"
    )
    forward_when_full: WhenFull = setting(
        WhenFull.DROP_OLDEST,
        "when the forward queue is full: drop_oldest (the tool gets the freshest traces) or "
        "drop_newest; either way the sources never wait",
        metavar="POLICY",
    )
    forward_max_message_bytes: int = setting(
        4 * MiB,
        "largest StreamTapsRequest sent to forward_to (gRPC servers refuse more than 4 MiB by "
        "default); larger traces are dropped and counted",
    )
    forward_max_streams: int = setting(
        1000, "streams open to forward_to at most (one per sender: node and tap id)"
    )
    correlation_max_entries: int = setting(
        100_000, "most streamed traces and name stems remembered at once"
    )
    correlation_idle_seconds: float = setting(
        300.0, "a streamed trace or name stem unused this long is forgotten"
    )
    drain_timeout_seconds: float = setting(
        20.0, "on SIGTERM/SIGINT, time allowed to publish every accepted message"
    )
    retention_max_bytes: int = setting(
        0, "delete the oldest files once ours in output_dir exceed this many bytes (0: no cap)"
    )
    retention_max_files: int = setting(
        0, "delete the oldest files once ours in output_dir exceed this many (0: no cap)"
    )
    log_summary_seconds: float = setting(
        60.0, "log one line of traffic totals this often while there is traffic (0: never)"
    )
    log_level: str = setting("info", "debug, info, warning or error", choices=LOG_LEVELS)
    log_format: str = setting("text", "text or json (one object per line)", choices=LOG_FORMATS)

    def __post_init__(self) -> None:
        check_settings(self, _CHECKS)
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ConfigError("tls_cert_file: tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ConfigError("tls_client_ca_file: mutual TLS needs tls_cert_file and tls_key_file")
        self._check_forwarding()
        minimum = self.queue_max_items + self.writers * self.writer_batch_max_items
        if self.correlation_max_entries < minimum:
            # A stem forgotten while its files are still queued could be numbered twice.
            raise ConfigError(
                f"correlation_max_entries: must be at least queue_max_items + writers * "
                f"writer_batch_max_items ({minimum}), got {self.correlation_max_entries}"
            )

    def _check_forwarding(self) -> None:
        if self.output_dir is None and not self.forward_to:
            raise ConfigError(
                "output_dir: '' writes no files, so it needs forward_to (a pure bridge); "
                "without forward_to set an output directory"
            )
        if (self.forward_tls_cert_file is None) != (self.forward_tls_key_file is None):
            raise ConfigError(
                "forward_tls_cert_file: forward_tls_cert_file and forward_tls_key_file go together"
            )
        if not self.forward_to and self.forward_tls_files:
            raise ConfigError("forward_tls_ca_file: the forward_tls_* files need forward_to")

    @property
    def forward_tls_files(self) -> bool:
        return any(
            path is not None
            for path in (
                self.forward_tls_ca_file,
                self.forward_tls_cert_file,
                self.forward_tls_key_file,
            )
        )


# --- validation -------------------------------------------------------------------------

Check = Callable[[Any], "str | None"]


def check_settings(settings: Any, checks: Mapping[str, Check]) -> None:
    """Run each field's check, in field order; the first problem raises, naming the field."""
    for item in dataclasses.fields(settings):
        check = checks.get(item.name)
        if check is not None:
            problem = check(getattr(settings, item.name))
            if problem:
                raise ConfigError(f"{item.name}: {problem}")


def in_range(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None

    return check


def one_of(*allowed: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}, got {value!r}"

    return check


def _address(value: str) -> str | None:
    if value == "":
        return None
    try:
        split_address(value)
    except ValueError as exc:
        return str(exc)
    return None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+|:authority|:path|:method")


def _header_names(value: tuple[str, ...]) -> str | None:
    bad = [name for name in value if not _HEADER_NAME.fullmatch(name)]
    return f"not lowercase HTTP header names: {bad}" if bad else None


_CHECKS: dict[str, Check] = {
    "listen": _address,
    "metrics_listen": _address,
    "ui_listen": _address,
    "ui_max_transactions": in_range(100, 1_000_000),
    "writers": in_range(1, 64),
    "writer_batch_max_items": in_range(1, 4096),
    "queue_max_items": in_range(1, 10_000_000),
    "queue_max_bytes": in_range(64 * KiB, 64 * GiB),
    "file_mode": in_range(0, 0o777),
    "trace_id_headers": _header_names,
    "redact_headers": _header_names,
    "max_message_bytes": in_range(1 * KiB, 2 * GiB - 1),
    "max_headers_per_message": in_range(1, 10_000_000),
    "max_concurrent_streams": in_range(1, 1_000_000),
    "max_streams_per_peer": in_range(1, 1_000_000),
    "max_streams_per_connection": in_range(1, 1_000_000),
    "extproc_max_concurrent_streams": in_range(1, 1_000_000),
    "extproc_max_streams_per_peer": in_range(1, 1_000_000),
    "extproc_max_body_bytes": in_range(0, 1 * GiB),
    "extproc_assembly_max_bytes": in_range(1 * MiB, 64 * GiB),
    "log_summary_seconds": in_range(0, 24 * 3600),
    "stream_idle_timeout_seconds": in_range(0, 30 * 24 * 3600),
    "forward_to": _address,
    "forward_queue_max_items": in_range(1, 10_000_000),
    "forward_queue_max_bytes": in_range(64 * KiB, 64 * GiB),
    "forward_max_message_bytes": in_range(1 * KiB, 2 * GiB - 1),
    "forward_max_streams": in_range(1, 1_000_000),
    "correlation_max_entries": in_range(1, 100_000_000),
    "correlation_idle_seconds": in_range(0.001, 7 * 24 * 3600),
    "drain_timeout_seconds": in_range(0, 3600),
    "retention_max_bytes": in_range(0, 2**62),
    "retention_max_files": in_range(0, 2**62),
    "log_level": one_of(*LOG_LEVELS),
    "log_format": one_of(*LOG_FORMATS),
}


# --- loading ----------------------------------------------------------------------------

Table = TypeVar("Table")
FIELDS = {item.name: item for item in dataclasses.fields(Settings)}

_SIZE = re.compile(r"^\s*(\d+)\s*(|k|ki|kib|m|mi|mib|g|gi|gib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "ki": KiB, "kib": KiB, "m": MiB, "mi": MiB, "mib": MiB}
_SIZE_UNITS |= {"g": GiB, "gi": GiB, "gib": GiB}


def _to_int(name: str, value: Any, octal: bool = False) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a whole number, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if octal:
            try:
                return int(value, 8)
            except ValueError:
                raise ConfigError(
                    f"{name}: expected octal digits such as 0640, got {value!r}"
                ) from None
        match = _SIZE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ConfigError(
        f"{name}: expected a whole number (sizes may say KiB, MiB, GiB), got {value!r}"
    )


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "true",
        "yes",
        "on",
        "1",
        "false",
        "no",
        "off",
        "0",
    ):
        return value.lower() in ("true", "yes", "on", "1")
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _to_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        items = [str(part).strip() for part in value]
    elif value is None:
        items = []
    else:
        raise ConfigError(f"{name}: expected a list or a comma-separated string, got {value!r}")
    return tuple(item.lower() for item in items if item)


@functools.cache
def _field_types(table: Any) -> dict[str, Any]:
    return typing.get_type_hints(table)


def field_types(table: type) -> dict[str, Any]:
    """The resolved type of every field of a settings table (annotations are strings here)."""
    return _field_types(table)


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigError(f"{name}: expected a number of seconds, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {value!r}") from None


def _to_path(name: str, value: Any, *, optional: bool) -> Path | None:
    if optional and (value is None or value == ""):
        return None
    if not isinstance(value, str | Path) or not str(value):
        raise ConfigError(f"{name}: expected a path, got {value!r}")
    return Path(value)


def _to_enum(name: str, value: Any, members: type[enum.Enum]) -> enum.Enum:
    try:
        return members(str(value).lower())
    except ValueError:
        allowed = ", ".join(str(member.value) for member in members)
        raise ConfigError(f"{name}: must be one of {allowed}, got {value!r}") from None


def coerce_setting(item: dataclasses.Field[Any], value: Any, kind: Any = None) -> Any:
    """`value` (from YAML or a flag) as `kind`, the resolved type of the settings field
    `item` (a field may also carry its own `parse` in its metadata)."""
    name = item.name
    parse = item.metadata.get("parse")
    if parse is not None:
        return parse(name, value)
    optional = typing.get_origin(kind) in (types.UnionType, typing.Union) and type(None) in (
        typing.get_args(kind)
    )
    if optional:
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if kind is bool:
        return _to_bool(name, value)
    if kind is int:
        return _to_int(name, value, octal=bool(item.metadata.get("octal")))
    if kind is float:
        return _to_float(name, value)
    if kind is Path:
        return _to_path(name, value, optional=optional)
    if typing.get_origin(kind) is tuple:
        return _to_list(name, value)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return _to_enum(name, value, kind)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected text, got {value!r}")
        return value.lower() if "choices" in item.metadata else value
    raise TypeError(f"setting {name} has a type no reader knows: {kind!r}")


def _unknown(keys: list[str], known: Mapping[str, Any]) -> ConfigError:
    hints = []
    for key in keys:
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return ConfigError(f"unknown settings: {', '.join(hints)}")


def build_table(table: type[Table], *layers: Mapping[str, Any]) -> Table:
    """An instance of the settings table `table`: its defaults overridden by each layer in
    turn, every value coerced to its field's type; validated by the table itself."""
    known = {item.name: item for item in dataclasses.fields(table)}  # type: ignore[arg-type]
    merged: dict[str, Any] = {}
    for layer in layers:
        unknown = sorted(str(key) for key in layer if key not in known)
        if unknown:
            raise _unknown(unknown, known)
        kinds = field_types(table)
        merged.update(
            {key: coerce_setting(known[key], value, kinds[key]) for key, value in layer.items()}
        )
    return table(**merged)


# --- flags ------------------------------------------------------------------------------


def format_size(size_bytes: int) -> str:
    """A byte count as people write it: `64 MiB`, `1.5 KiB` (to a tenth), or the number."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size_bytes >= factor:
            if size_bytes % factor == 0:
                return f"{size_bytes // factor} {unit}"
            return f"{size_bytes / factor:.1f} {unit}"
    return str(size_bytes)


def _shown_default(item: dataclasses.Field[Any]) -> str:
    default: Any = item.default
    meta = item.metadata
    if "shown" in meta:
        return str(meta["shown"])
    if isinstance(default, tuple):
        return ",".join(default) or "''"
    if meta.get("octal"):
        return format(default, "04o")
    if meta.get("size"):
        return format_size(default)
    return str(getattr(default, "value", default))


def _add_flag(group: argparse._ArgumentGroup, item: dataclasses.Field[Any]) -> None:
    meta = item.metadata
    if "switch" in meta:
        exclusive = group.add_mutually_exclusive_group()
        for option, (value, text) in meta["switch"].items():
            mark = " (the default)" if value == item.default else ""
            exclusive.add_argument(
                option,
                dest=item.name,
                action="store_const",
                const=value,
                default=argparse.SUPPRESS,
                help=text + mark,
            )
        return
    required = item.default is dataclasses.MISSING
    extra: dict[str, Any] = {}
    if "choices" in meta:
        extra["choices"] = meta["choices"]
    if meta.get("repeatable"):
        extra["action"] = "append"
    if required:
        extra["required"] = True
    group.add_argument(
        *meta.get("flags", (f"--{item.name.replace('_', '-')}",)),
        dest=item.name,
        default=argparse.SUPPRESS,
        metavar=meta.get("metavar", _metavar(item)),
        help=meta["help"] if required else f"{meta['help']} (default: {_shown_default(item)})",
        **extra,
    )


def _metavar(item: dataclasses.Field[Any]) -> str:
    """The flag's placeholder: its unit where the name ends in one (BYTES, SECONDS), COUNT for
    a per-something limit (`max_streams_per_peer`), true|false for a switch."""
    if item.type in (bool, "bool"):
        return "true|false"
    if item.name.startswith("max_") and "_per_" in item.name:
        return "COUNT"
    return item.name.rsplit("_", 1)[-1].upper()


def add_setting_flags(parser: argparse.ArgumentParser, table: type, title: str) -> None:
    """One flag per field of the settings table `table`, under `title` (or the field's own
    `group`), its help ending with the default. Flags not given stay out of the parsed
    namespace, so `build_table(table, given)` applies the table's defaults."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in dataclasses.fields(table):
        heading = item.metadata.get("group", title)
        if heading not in groups:
            groups[heading] = parser.add_argument_group(heading)
        _add_flag(groups[heading], item)


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML config file, with errors that name the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of settings, not {type(loaded).__name__}"
        )
    return loaded


def build_settings(*layers: Mapping[str, Any]) -> Settings:
    """Settings from defaults overridden by each layer in turn (file, then flags)."""
    return build_table(Settings, *layers)


def load_settings(config_file: Path | None, overrides: Mapping[str, Any]) -> Settings:
    """The settings `serve` runs with: embedded defaults < config file < flags."""
    from_file = read_config_file(config_file) if config_file is not None else {}
    return build_settings(from_file, overrides)
