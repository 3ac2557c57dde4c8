"""Writing files so that a crash or a power cut never leaves half of one: ``atomic_write``.

Every file the agent and the collector replace (cached config, overrides, acceptance
records, dnsmasq and browser policy, broker passwords, generated configs) goes through
this one function: write a temporary file next to the target, flush, optionally fsync,
``os.replace`` it over the target, and optionally fsync the directory so the rename
itself survives a power cut.

``durable=True`` (the default) costs two fsyncs: 10-40 ms on an SD card.  Use it for
anything whose loss after a power cut would change behaviour (a teacher's override, the
last-known-good config, the PIN hash, an acceptance).  ``durable=False`` is for files
that are rebuilt from other state on every start anyway (generated dnsmasq and browser
config): a crash still never leaves a torn file, only possibly the previous version.

``tmp_dir``: where the temporary file is made, when the target's own directory is read
by a program that must never see it (Chromium reads every ``*.json`` in its policy
folder, agent/filter/browser.py).  It must be on the same filesystem as the target.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, data: bytes | str, mode: int = 0o644, *, durable: bool = True,
                 tmp_dir: str | os.PathLike | None = None) -> None:
    """Replace *path* with *data* (str is written as UTF-8) in one step, with permissions *mode*.

    Raises OSError (ENOSPC, EROFS, EACCES...) with the target unchanged; the temporary
    file is removed on failure."""
    target = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    folder = Path(tmp_dir) if tmp_dir is not None else target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(target.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in *folder* survive a power cut (best effort)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
