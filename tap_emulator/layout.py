"""Contract: the names of the files in an output directory, the one place every room reads them.

A published file is `<stem>-<sequence>.pb`. The stem is built by derive (naming.py) from the
safe alphabet below and never starts with `.` or `-`; the sequence is a decimal number that
only goes up for a stem. Temporaries, while a file is being written under a name of its own
(where the file system cannot write unnamed files), are dot files with our prefix and a random
instance id, so they are never mistaken for captures, never collide between emulators sharing a
volume, and can be told apart from other programs' files in a shared directory such as /tmp.

Derive (naming), write (publisher, retention) and the capture reader import these names, so a
change to the layout is a change here and nowhere else.
"""

from __future__ import annotations

import re
import secrets

SUFFIX = ".pb"
NAME_MAX_BYTES = 255
MAX_SEQUENCE_DIGITS = 20

# The characters a stem may hold: a name made of these cannot name a parent directory, hold a
# path separator or need quoting in a shell.
SAFE_CHARACTERS = "A-Za-z0-9._:-"
UNSAFE_CHARACTER = re.compile(f"[^{SAFE_CHARACTERS}]")
ALL_SAFE = re.compile(f"[{SAFE_CHARACTERS}]*").fullmatch

OUR_FILE = re.compile(
    rf"(?P<stem>[A-Za-z0-9_:][{SAFE_CHARACTERS}]*)-(?P<sequence>[0-9]{{1,{MAX_SEQUENCE_DIGITS}}})"
    + re.escape(SUFFIX)
)

TEMP_PREFIX = ".tap-emulator-tmp-"
# Enough random bits that two emulators (other hosts, other PID namespaces) never pick the
# same instance id, and that nobody can create our next temporary name ahead of us.
_INSTANCE_ID_BYTES = 12


def file_name(stem: str, sequence: int) -> str:
    """The published name of a stem's file number `sequence`."""
    return f"{stem}-{sequence}{SUFFIX}"


def parse_file_name(name: str) -> tuple[str, int] | None:
    """(stem, sequence) of a name we publish, or None for any other name."""
    match = OUR_FILE.fullmatch(name)
    if match is None:
        return None
    return match["stem"], int(match["sequence"])


def new_instance_id() -> str:
    """A random id for this emulator's temporaries (unpredictable, unique across hosts)."""
    return secrets.token_hex(_INSTANCE_ID_BYTES)


def temporary_name(instance_id: str, number: int) -> str:
    """The name of a temporary while it is written; a fresh random tail each time, so a name
    taken by someone else (by accident or on purpose) costs one retry, not a stall."""
    return f"{TEMP_PREFIX}{instance_id}-{number}-{secrets.token_hex(4)}"


def is_temporary(name: str) -> bool:
    """Whether a name is one of ours being written (or left behind by a crash)."""
    return name.startswith(TEMP_PREFIX)
