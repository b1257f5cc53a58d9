"""Real file systems for fault tests: a small tmpfs that fills up, remounted read-only at will.

Tests run as root here, so `chmod` cannot make a directory unwritable; a tmpfs can. Where
mounting is not allowed the fixture skips with the reason printed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.unavailable import unavailable


@contextmanager
def tmpfs(mount_point: Path, size: str = "1m") -> Iterator[Path]:
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "none", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        unavailable(reason)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount(mount_point: Path, mode: str) -> None:
    """`ro` or `rw`."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)], check=True)


@contextmanager
def ext4_image(mount_point: Path, size: str = "64M") -> Iterator[Path]:
    """A loop-mounted ext4 file system (it can be frozen, and takes `chattr +i`), unmounted
    and deleted afterwards whatever happened (a frozen one is thawed first)."""
    image = mount_point.with_name(mount_point.name + ".img")
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        reason = f"cannot loop-mount an ext4 image here: {mounted.stderr.strip()}"
        unavailable(reason)
    try:
        yield mount_point
    finally:
        thaw(mount_point)
        subprocess.run(["chattr", "-R", "-i", str(mount_point)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        image.unlink(missing_ok=True)


def freeze(mount_point: Path) -> None:
    """`fsfreeze -f`: every write to the file system waits until `thaw`."""
    subprocess.run(["fsfreeze", "-f", str(mount_point)], check=True)


def thaw(mount_point: Path) -> None:
    """`fsfreeze -u`; harmless when the file system is not frozen."""
    subprocess.run(["fsfreeze", "-u", str(mount_point)], capture_output=True, check=False)


@contextmanager
def frozen(mount_point: Path) -> Iterator[Path]:
    freeze(mount_point)
    try:
        yield mount_point
    finally:
        thaw(mount_point)
