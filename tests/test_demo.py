"""The README's demo command, run for real: broker, collector, simulated agents, a press."""

import subprocess
import sys
from pathlib import Path

import pytest

from services import require_binary

BIN = Path(sys.executable).parent


@pytest.mark.timeout(180)
def test_demo_walks_through_a_press(tmp_path):
    require_binary("mosquitto")
    result = subprocess.run([str(BIN / "classroom-server"), "demo", "--dir", str(tmp_path / "demo")],
                            capture_output=True, text=True, timeout=170)
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert 'screen blank: True; it says: "Well done for telling. A grown-up is coming."' in out
    assert "alert client shows: RAISED in room 5b, seat 'Table 1'" in out
    assert 'the pupil now sees: "A grown-up has seen your message."' in out
    assert "clears the screen; blank: False" in out
    timeline = [line.split()[1] for line in out.splitlines() if line.startswith("     20")]
    assert timeline == ["raised", "acknowledged", "cleared"]
    assert out.rstrip().endswith("demo: ok")


def test_demo_unknown_room_is_one_line(tmp_path):
    result = subprocess.run([str(BIN / "classroom-server"), "demo", "--dir", str(tmp_path / "d"), "--room", "9z"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "classroom-server: error: --room: unknown room '9z'; known: 1a, 5b, reception\n"
