"""Write: what a failed system call means for the writers: its reason (a metric label), and
whether it belongs to one file (drop that file, go on) or to the disk as a whole (retry)."""

from __future__ import annotations

import errno

from tap_emulator.labels import WriteErrorReason

_REASONS = {
    errno.ENOSPC: WriteErrorReason.ENOSPC,
    errno.EDQUOT: WriteErrorReason.EDQUOT,
    errno.EFBIG: WriteErrorReason.EFBIG,
    errno.EIO: WriteErrorReason.EIO,
    errno.EROFS: WriteErrorReason.EROFS,
    errno.EACCES: WriteErrorReason.EACCES,
    errno.EPERM: WriteErrorReason.EACCES,
    errno.ENAMETOOLONG: WriteErrorReason.ENAMETOOLONG,
    errno.EMFILE: WriteErrorReason.EMFILE,
    errno.ENFILE: WriteErrorReason.EMFILE,
    errno.EISDIR: WriteErrorReason.EISDIR,
}
# Errors that belong to one file: retrying that file cannot help, the next file may well work.
_FILE_ERRORS = frozenset({errno.EFBIG, errno.ENAMETOOLONG})
# Stands in for a bug while one file was published: that file is dropped, not every later one.
BUG = "<internal error>"


def reason_of(error: OSError) -> WriteErrorReason:
    return _REASONS.get(error.errno or 0, WriteErrorReason.OTHER)


def is_file_error(error: OSError) -> bool:
    """Whether retrying cannot help this file (and the next file may well work)."""
    return error.errno in _FILE_ERRORS or error.filename is BUG
