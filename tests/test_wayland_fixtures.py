"""The headless-sway fixture cleans up after a killed test run, and never after a live session."""

import os

from wayland_fixtures import clear_stale_runtime_dir


def test_a_leftover_runtime_dir_with_no_live_process_is_removed(tmp_path):
    runtime_dir = tmp_path / "65534"
    runtime_dir.mkdir()
    (runtime_dir / "sway.conf").write_text("output HEADLESS-1 resolution 800x600\n")
    clear_stale_runtime_dir(runtime_dir, uid=2**31 - 7)   # a uid nothing runs as
    assert not runtime_dir.exists()


def test_a_runtime_dir_whose_user_has_a_live_process_is_kept(tmp_path):
    runtime_dir = tmp_path / "live"
    runtime_dir.mkdir()
    (runtime_dir / "sway.conf").write_text("x\n")
    clear_stale_runtime_dir(runtime_dir, uid=os.getuid())   # this test process is alive
    assert (runtime_dir / "sway.conf").exists()


def test_a_runtime_dir_we_did_not_make_is_kept(tmp_path):
    runtime_dir = tmp_path / "real"
    runtime_dir.mkdir()
    (runtime_dir / "pulse").mkdir()
    clear_stale_runtime_dir(runtime_dir, uid=2**31 - 7)
    assert (runtime_dir / "pulse").exists()
