"""A small real disk for state-file tests: a tmpfs mounted inside the test's own directory.

``small_disk(size)`` mounts ``tmpfs -o size=...`` under tmp_path (root only: the suite runs
as root; otherwise the test is skipped, or fails with CI=true) and unmounts it after the
test.  ``fill(folder)`` writes a filler file until the disk says ENOSPC and returns it;
delete it to give the space back.
"""

from __future__ import annotations

import errno
import itertools
import os
import subprocess
from pathlib import Path

import pytest

from services import require_root


def fill(folder: Path, name: str = "filler") -> Path:
    """Fill the filesystem holding *folder* to the last byte; returns the filler file."""
    path = Path(folder) / name
    chunk = b"\0" * 65536
    with open(path, "ab", buffering=0) as fh:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    fh.write(chunk[:size])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    return path


@pytest.fixture
def small_disk(tmp_path):
    """factory(size='4m') -> Path of a fresh tmpfs mounted under tmp_path."""
    require_root("mounting a small tmpfs as a full state disk")
    mounted: list[Path] = []
    counter = itertools.count(1)

    def factory(size: str = "4m") -> Path:
        where = tmp_path / f"disk-{next(counter)}"
        where.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield factory
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(folder: Path) -> int:
    fs = os.statvfs(folder)
    return fs.f_bavail * fs.f_frsize
