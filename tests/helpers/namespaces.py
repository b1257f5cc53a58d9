"""Command prefixes that run a server in namespaces of its own, as containers do.

`own_pid_namespace` makes the server pid 1 of a fresh PID namespace (two of them on one volume
have the same pid, as two pods sharing a volume do). With `hide_proc`, /proc in its own mount
namespace is an empty tmpfs, so files cannot be linked through /proc/self/fd: the server
writes named temporaries, as on a file system without O_TMPFILE (NFS, say).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def own_pid_namespace(*, hide_proc: bool = False) -> list[str]:
    """A prefix for EmulatorProcess's `entry`: the command that follows runs as pid 1."""
    assert shutil.which("unshare"), "unshare (util-linux) is needed"
    setup = "mount -t tmpfs none /proc" if hide_proc else "mount -t proc proc /proc"
    # `exec` keeps the server pid 1 of the namespace, and signals sent to `unshare`'s child
    # reach it; the mount stays inside the new mount namespace.
    return ["unshare", "--mount", "--pid", "--fork", "sh", "-c", f'{setup} && exec "$@"', "sh"]


def innermost_pid(pid: int) -> int:
    """The process that `unshare --fork` (pid `pid`) runs; `pid` itself for any other command.

    `unshare` ignores SIGTERM, so signals for the server must go to its child."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    if Path(command.decode()).name != "unshare":
        return pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"unshare (pid {pid}) started no child")
