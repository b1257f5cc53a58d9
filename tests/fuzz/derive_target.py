"""atheris target: arbitrary bytes through decode and name, as one StreamTaps call.

    python tests/fuzz/derive_target.py -max_total_time=600 NEW_DIR tests/fuzz/corpus/derive

The input is cut into varint32-length-delimited messages (the corpus format, see
decode_and_name.split_stream); each goes through `StreamTapsRequest.FromString` and
`Deriver.derive`, once in each name format. A crash is any exception other than
DecodeError, or a planned file name that is unsafe or outside the output directory. Add
each crash input to corpus/derive/ so that `make test` replays it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if TYPE_CHECKING:
    from tests.fuzz.decode_and_name import Pipeline

_pipelines: list[Pipeline] = []


def check_derive_input(data: bytes, pipelines: Sequence[Pipeline] = ()) -> None:
    """The property every derive input must keep (also used by the corpus replay, which
    passes its own pipelines; the fuzzer uses scratch ones that live as long as it does)."""
    from tap_emulator.derive.naming import NameFormat
    from tests.fuzz.decode_and_name import scratch_pipeline, split_stream

    if not pipelines:
        if not _pipelines:
            _pipelines.extend(scratch_pipeline(name_format) for name_format in NameFormat)
        pipelines = _pipelines
    messages = split_stream(data)
    for pipeline in pipelines:
        pipeline.feed_stream(messages)


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["tap_emulator", "tests.fuzz"]):
        import tests.fuzz.decode_and_name  # noqa: F401

    atheris.Setup(sys.argv, check_derive_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
