"""scripts/install-agent.sh: the dry run on this real machine changes nothing and says
everything it would do; a real run into a temporary root writes the right files with
the right owners and modes, and running it again changes nothing (idempotent)."""

from __future__ import annotations

import os
import pwd
import grp
import subprocess
from pathlib import Path

import pytest

from agent.config import load_bootstrap
from agent.desktop.pin import hash_pin, read_pin_file
from services import require_root

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "install-agent.sh"
SECRET = "hunter2-not-for-logs"
PIN_HASH = hash_pin("246801")


@pytest.fixture
def creds(tmp_path):
    path = tmp_path / "5b-pi-01.yaml"
    path.write_text(f"username: 5b-pi-01\npassword: {SECRET}\n")
    return path


def args(creds, *extra):
    return ["--device", "5b-pi-01", "--site", "penny-acres",
            "--broker", "mqtts://classroom.penny-acres.sch.uk:8883",
            "--collector", "https://classroom.penny-acres.sch.uk", "--credentials", str(creds), *extra]


def run(*argv, env=None):
    return subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60, env=env)


def snapshot(*paths):
    return {p: os.path.exists(p) for p in paths}


WATCHED = ["/etc/classroom-safety", "/opt/classroom-safety", "/var/lib/classroom-agent",
           "/etc/systemd/system/classroom-agent.service", "/etc/X11/Xsession.d/90classroom-safety",
           "/usr/local/libexec/classroom-safety-grant", "/etc/xdg/autostart/classroom-safety-grant.desktop",
           "/etc/chromium/policies/managed", "/etc/firefox/policies"]


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_dry_run_prints_every_step_and_changes_nothing(creds):
    before = snapshot(*WATCHED)
    had_user = user_exists("classroom-agent")
    result = run(*args(creds, "--session-user", "pupil", "--staff-pin-hash", PIN_HASH, "--dry-run"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would write: /etc/classroom-safety/agent.yaml (mode 640, root:classroom-agent)" in out
    assert "    | device: 5b-pi-01" in out and "    | session_user: pupil" in out
    assert "    | broker_url: mqtts://classroom.penny-acres.sch.uk:8883" in out
    assert "would write: /etc/classroom-safety/credentials.yaml (mode 600, classroom-agent:classroom-agent)" in out
    assert SECRET not in out and SECRET not in result.stderr  # secrets never printed
    # ...nor the PIN's hash, nor any part of it (issue 14, item 20)
    for part in [PIN_HASH, *PIN_HASH.split("$")[-2:]]:
        assert part not in out and part not in result.stderr
    assert "would write: /etc/classroom-safety/staff-pin (mode 600, classroom-agent:classroom-agent)" in out
    assert "    | staff_pin_file: /etc/classroom-safety/staff-pin" in out and "staff_pin_hash" not in out
    assert "    | control_group: classroom-press" in out
    if not had_user:
        assert "would run: useradd --system" in out and "classroom-agent" in out
    assert "/opt/classroom-safety/venv" in out
    assert "would write: /etc/systemd/system/classroom-agent.service" in out or \
        "unchanged: /etc/systemd/system/classroom-agent.service" in out
    assert "systemctl enable classroom-agent" in out or "unchanged: classroom-agent enabled" in out
    assert "would write: /usr/local/libexec/classroom-safety-grant (mode 755, root:root)" in out
    assert "    | /usr/local/libexec/classroom-safety-grant classroom-agent || true" in out      # X11 session
    assert "    | Exec=/usr/local/libexec/classroom-safety-grant classroom-agent" in out        # labwc/wayfire
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert snapshot(*WATCHED) == before
    assert user_exists("classroom-agent") == had_user


@pytest.mark.parametrize("extra,message", [
    (["--device", "5B-PI"], "--device: '5B-PI' is not a valid id"),
    (["--broker", "http://x"], "--broker: 'http://x' is not mqtts://host:port"),
    (["--screen", "vnc"], "--screen: 'vnc' is not auto"),
    (["--staff-pin-hash", "1234"], "--staff-pin-hash: not a hash"),
    # an old 4-digit-era hash, and a hash of a 5-digit PIN
    (["--staff-pin-hash", "scrypt$16384$8$1$c2FsdA$aGFzaA"], "made by an older hash-pin that allowed 4-digit PINs"),
    (["--staff-pin-hash", "scrypt$16384$8$1$5$c2FsdA$aGFzaA"], "the PIN has 5 digits; a staff PIN needs 6 to 12"),
    (["--press-group", "nogroup", "--service-user", "nobody"], "--press-group: must not be the agent's own group"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--ca-file", "/etc/hostname"], "--ca-file: '/etc/hostname' is not a PEM certificate"),
])
def test_bad_options_give_one_line_errors(creds, extra, message):
    result = run(*args(creds), *extra, "--dry-run")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("install-agent.sh: error: ") and message in lines[0]
    assert result.stdout == ""  # failed before doing (or pretending) anything


def test_missing_and_malformed_credentials(tmp_path, creds):
    result = run("--device", "5b-pi-01", "--dry-run")
    assert result.returncode == 1 and "--site is required" in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("username: 5b-pi-01\n")
    result = run(*args(bad), "--dry-run")
    assert result.returncode == 1 and "has no username: and password: lines" in result.stderr
    result = run(*args(tmp_path / "nope.yaml"), "--dry-run")
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_real_install_into_a_root_is_idempotent(tmp_path, creds):
    require_root("setting file owners")
    root = tmp_path / "sdcard"
    venv_bin = root / "opt/classroom-safety/venv/bin"
    venv_bin.mkdir(parents=True)
    # A stand-in venv: python exists, pip records its calls, classroom-agent is the real one
    # (so the script's own check-config runs for real).
    (venv_bin / "python").symlink_to("/usr/bin/python3")
    calls = tmp_path / "pip-calls"
    (venv_bin / "pip").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (venv_bin / "pip").chmod(0o755)
    (venv_bin / "classroom-agent").symlink_to(ROOT / ".venv/bin/classroom-agent")
    user, group = "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    # An agent.yaml from before the PIN had its own file: the hash must not survive in it.
    (root / "etc/classroom-safety").mkdir(parents=True)
    (root / "etc/classroom-safety/agent.yaml").write_text("device: 5b-pi-01\nstaff_pin_hash: 'scrypt$1$1$1$old$old'\n")
    (root / "etc/lightdm").mkdir()                      # LightDM is installed: its display-setup hook is set
    pin = tmp_path / "pin.hash"
    pin.write_text(PIN_HASH + "\n")
    base = args(creds, "--root", str(root), "--service-user", user, "--staff-pin-file", str(pin))

    first = run(*base)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "checked: /etc/classroom-safety/agent.yaml" in first.stdout
    assert calls.read_text().split() == ["install", "--quiet", "--upgrade", str(ROOT)]
    agent_yaml = root / "etc/classroom-safety/agent.yaml"
    boot = load_bootstrap(agent_yaml)  # the real loader accepts what the script wrote
    assert (boot.device, boot.site, boot.screen_backend) == ("5b-pi-01", "penny-acres", "auto")

    def owner_mode(path):
        st = path.stat()
        return pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name, oct(st.st_mode & 0o777)
    assert owner_mode(agent_yaml) == ("root", group, "0o640")
    cred = root / "etc/classroom-safety/credentials.yaml"
    assert owner_mode(cred) == (user, group, "0o600") and SECRET in cred.read_text()
    assert owner_mode(root / "var/lib/classroom-agent") == (user, group, "0o750")
    staff_pin = root / "etc/classroom-safety/staff-pin"
    assert owner_mode(staff_pin) == (user, group, "0o600") and read_pin_file(staff_pin) == PIN_HASH
    assert "staff_pin_hash" not in agent_yaml.read_text() and "had a staff_pin_hash" in first.stdout
    assert (boot.staff_pin_file, boot.control_group) == ("/etc/classroom-safety/staff-pin", "classroom-press")
    assert PIN_HASH not in first.stdout + first.stderr and "old$old" not in first.stdout + first.stderr
    assert owner_mode(root / "etc/chromium/policies/managed") == (user, group, "0o755")
    unit = (root / "etc/systemd/system/classroom-agent.service").read_text()
    assert f"\nUser={user}\n" in unit and "Type=notify" in unit
    grant = root / "usr/local/libexec/classroom-safety-grant"
    assert owner_mode(grant) == ("root", "root", "0o755")
    assert grant.read_text() == (ROOT / "scripts/session-grant.sh").read_text()
    assert f"Exec=/usr/local/libexec/classroom-safety-grant {user}\n" in \
        (root / "etc/xdg/autostart/classroom-safety-grant.desktop").read_text()
    hook = (root / "etc/lightdm/lightdm.conf.d/90-classroom-safety.conf").read_text()
    assert f"display-setup-script=/usr/local/libexec/classroom-safety-grant --display-setup {user}\n" in hook
    assert SECRET not in first.stdout + first.stderr
    # Even an account that was given the agent's own group (as the old docs said, for the
    # control socket) finds no PIN hash: not in agent.yaml, and staff-pin is the agent's alone.
    import shutil
    import tempfile

    reachable = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are root's alone
    try:
        reachable.chmod(0o755)
        for path in (agent_yaml, staff_pin):
            subprocess.run(["cp", "-p", str(path), str(reachable)], check=True)  # owner and mode kept
        pupil = ["setpriv", "--reuid=4242", "--regid=4242", f"--groups={pwd.getpwnam(user).pw_gid}", "--"]
        config = subprocess.run([*pupil, "cat", str(reachable / "agent.yaml")], capture_output=True, text=True)
        assert config.returncode == 0 and "scrypt" not in config.stdout
        stolen = subprocess.run([*pupil, "cat", str(reachable / "staff-pin")], capture_output=True, text=True)
        assert stolen.returncode != 0 and "Permission denied" in stolen.stderr and stolen.stdout == ""
    finally:
        shutil.rmtree(reachable, ignore_errors=True)

    second = run(*base)
    assert second.returncode == 0, second.stderr
    assert "wrote:" not in second.stdout and "run:" not in second.stdout.replace("unchanged", "")
    assert second.stdout.rstrip().endswith("done: nothing needed changing")
    assert len(calls.read_text().splitlines()) == 1  # pip not run again

    third = run(*base, "--screen", "x11")
    assert third.returncode == 0
    assert [line for line in third.stdout.splitlines() if line.startswith("wrote:")] == \
        ["wrote: /etc/classroom-safety/agent.yaml"]
    assert load_bootstrap(agent_yaml).screen_backend == "x11"
