"""agent.files.atomic_write: the one way every file is replaced."""

from __future__ import annotations

import errno
import os

import pytest

import agent.files
from agent.files import atomic_write


def test_replaces_the_file_with_the_mode_asked_for(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    atomic_write(target, '{"new": "é"}', 0o600)
    assert target.read_text(encoding="utf-8") == '{"new": "é"}'
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_durable_fsyncs_the_file_and_its_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(agent.files.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    atomic_write(tmp_path / "a", b"1")
    assert len(synced) == 2                      # the data, then the rename
    synced.clear()
    atomic_write(tmp_path / "b", b"2", durable=False)
    assert synced == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("last known good")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(agent.files.os, "write", full)
    with pytest.raises(OSError) as err:
        atomic_write(target, "new")
    assert err.value.errno == errno.ENOSPC
    assert target.read_text() == "last known good"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_the_temp_file_can_live_elsewhere_on_the_same_filesystem(tmp_path):
    watched, scratch = tmp_path / "watched", tmp_path / "scratch"
    watched.mkdir()
    scratch.mkdir()
    atomic_write(watched / "policy.json", "{}", tmp_dir=scratch)
    assert [p.name for p in watched.iterdir()] == ["policy.json"]
    assert list(scratch.iterdir()) == []
