"""The guard against real processes, real files (watchdog) and real mounts."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone

import psutil
import pytest

from agent.policy.guard import Guard, comm_names, read_mounts
from fake_runtime import FakeRuntime
from lock_fixtures import PupilTool
from services import skip_or_fail, spawn, terminate, wait_until

pytestmark = pytest.mark.timeout(40)


@pytest.fixture
def rt(tmp_path):
    return FakeRuntime(tmp_path, start=datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc))


def fake_tool(tmp_path, name) -> str:
    """A real program on disk named like a bypass tool (a copy of sleep)."""
    path = tmp_path / name
    shutil.copy("/bin/sleep", path)
    return str(path)


# --------------------------------------------------------------------------- processes


def test_a_pupils_bypass_tool_is_found_ended_and_reported(tmp_path, rt):
    tool = PupilTool("tor")
    bystander = PupilTool("tortoise")  # not "tor"
    guard = Guard(bypass_processes=["tor", "openvpn"], end_bypass_processes=True, watch_mounts=[],
                  use_watchdog=False)
    guard.runtime = rt
    try:
        wait_until(lambda: tool.comm() == "tor", timeout=5)
        found = guard.check_processes()
        assert tool.wrapper.wait(timeout=10) is not None  # it really ended (runuser saw its child die)
        assert not psutil.pid_exists(tool.pid) or psutil.Process(tool.pid).status() == psutil.STATUS_ZOMBIE
        assert [f["pid"] for f in found] == [tool.pid]
        [ev] = rt.of_type("bypass_process")
        assert (ev["name"], ev["pid"], ev["action"], ev["user"]) == ("tor", tool.pid, "ended", "nobody")
        assert bystander.wrapper.poll() is None
        assert guard.check_processes() == []  # reported once
    finally:
        tool.close()
        bystander.close()


def test_a_system_accounts_tool_is_reported_not_fought(tmp_path, rt):
    proc = spawn([fake_tool(tmp_path, "privoxy"), "300"])  # root's: a technician installed it
    guard = Guard(bypass_processes=["privoxy"], end_bypass_processes=True, watch_mounts=[], use_watchdog=False)
    guard.runtime = rt
    try:
        wait_until(lambda: comm_names().get(proc.pid) == "privoxy", timeout=5)
        guard.check_processes()
        [ev] = rt.of_type("bypass_process")
        assert ev["action"] == "reported_system" and ev["user"] == "root"
        assert proc.poll() is None
    finally:
        terminate(proc)


def test_report_only_when_the_site_says_not_to_end(tmp_path, rt):
    proc = spawn([fake_tool(tmp_path, "openvpn"), "300"])
    guard = Guard(bypass_processes=["OpenVPN"], end_bypass_processes=False, watch_mounts=[], use_watchdog=False)
    guard.runtime = rt
    try:
        wait_until(lambda: comm_names().get(proc.pid) == "openvpn", timeout=5)
        guard.check_processes()
        [ev] = rt.of_type("bypass_process")
        assert ev["action"] == "reported" and ev["name"] == "openvpn"
        assert proc.poll() is None  # still running, as configured
        guard.check_processes()
        assert len(rt.of_type("bypass_process")) == 1
    finally:
        terminate(proc)


def test_a_process_that_execs_into_a_bypass_tool_is_caught(tmp_path, rt):
    # A shell (the pupil's) that waits, then execs the tool under the same PID.
    tool = PupilTool("tor", script='while [ ! -e "{dir}/go" ]; do sleep 0.05; done; exec "{tool}" 300')
    guard = Guard(bypass_processes=["tor"], end_bypass_processes=True, watch_mounts=[], use_watchdog=False)
    guard.runtime = rt
    try:
        wait_until(lambda: tool.comm() == "sh", timeout=5)
        guard.check_processes()
        assert rt.of_type("bypass_process") == []
        (tool.dir / "go").touch()
        wait_until(lambda: tool.comm() == "tor", timeout=5)
        guard.check_processes()
        assert tool.wrapper.wait(timeout=10) is not None
        assert rt.of_type("bypass_process")[0]["pid"] == tool.pid
    finally:
        tool.close()


class InstalledTool:
    """A real program installed on the device as a bypass tool (``bin/NAME``: a copy of
    *source* with bytes of its own appended, so its hash is nobody else's), and a pupil's
    folder to copy it into under a name of their own (``cp /usr/bin/tor ~/x; ~/x``)."""

    def __init__(self, name: str = "tor", source: str = "/bin/sleep"):
        import os
        import secrets
        import tempfile
        from pathlib import Path

        self.root = Path(tempfile.mkdtemp(prefix="installed-", dir="/tmp"))
        self.root.chmod(0o755)
        self.bin = self.root / "bin"
        self.bin.mkdir(mode=0o755)
        self.path = self.bin / name
        self.path.write_bytes(Path(source).read_bytes() + secrets.token_bytes(32))
        self.path.chmod(0o755)
        self.home = self.root / "home"                          # the pupil's own folder
        self.home.mkdir()
        os.chown(self.home, 65534, 65534)

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.mark.parametrize("how,matched", [("cp", "sha256"), ("ln -s", "path")])
def test_a_renamed_copy_or_a_link_of_an_installed_tool_is_caught(rt, how, matched):
    from services import require_root

    require_root()
    tool = InstalledTool("tor")
    # The pupil's own copy (or link) under a harmless name, run from their folder.
    pupil = PupilTool("x", script=f'{how} "{tool.path}" "{tool.home}/notes" && exec "{tool.home}/notes" 300')
    bystander = PupilTool("notes")                            # a different program with the same name
    guard = Guard(bypass_processes=["tor"], end_bypass_processes=True, watch_mounts=[], use_watchdog=False,
                  search_path=[str(tool.bin)])
    guard.runtime = rt
    try:
        assert guard.known_paths[str(tool.path)] == "tor" and "tor" in guard.known_hashes.values()
        wait_until(lambda: pupil.comm() == "notes", timeout=5)  # neither its name nor argv[0] says tor
        found = guard.check_processes()
        assert [(f["pid"], f["name"], f["matched"]) for f in found] == [(pupil.pid, "tor", matched)]
        assert pupil.wrapper.wait(timeout=10) is not None       # ended
        [ev] = rt.of_type("bypass_process")
        assert (ev["name"], ev["action"], ev["user"], ev["matched"]) == ("tor", "ended", "nobody", matched)
        assert ev["exe"].startswith(str(tool.path) if matched == "path" else str(tool.home))
        assert bystander.wrapper.poll() is None                 # same name, other program: left alone
    finally:
        pupil.close()
        bystander.close()
        tool.close()


def test_a_renamed_copy_of_a_tool_that_hides_itself_is_caught_by_its_file(rt):
    """Tor makes itself non-dumpable (DisableDebuggerAttachment), which closes
    /proc/PID/exe even to its own user; ssh-agent does the same, so a renamed copy of it
    stands in: the file its argv[0] names is what is hashed."""
    from services import require_binary, require_root

    require_root()
    tool = InstalledTool("ssh-agent", source=require_binary("ssh-agent"))
    pupil = PupilTool("x", script=f'cp "{tool.path}" "{tool.home}/notes" && '
                                  f'exec "{tool.home}/notes" -D -a "{tool.home}/agent.sock"')
    guard = Guard(bypass_processes=["ssh-agent"], end_bypass_processes=True, watch_mounts=[], use_watchdog=False,
                  search_path=[str(tool.bin)])
    guard.runtime = rt
    try:
        wait_until(lambda: pupil.comm() == "notes" and (tool.home / "agent.sock").exists(), timeout=10)
        hidden = subprocess.run(["runuser", "-u", "nobody", "--", "readlink", f"/proc/{pupil.pid}/exe"],
                                capture_output=True, text=True)
        assert hidden.returncode != 0                          # not even its own user may look
        found = guard.check_processes()
        assert [(f["pid"], f["name"], f["matched"], f["action"]) for f in found] == \
            [(pupil.pid, "ssh-agent", "sha256", "ended")]
        assert rt.of_type("bypass_process")[0]["exe"] == str(tool.home / "notes")
    finally:
        pupil.close()
        tool.close()


def test_site_guard_config_is_used_and_blank_names_ignored(rt):
    guard = Guard()
    guard.runtime = rt
    guard._configure(rt.tree.site.guard)
    assert "tor" in guard.bypass and "google-chrome" in guard.bypass and guard.end_bypass
    assert guard.watch_mounts == ("/media", "/run/media")
    guard = Guard(bypass_processes=["", "  ", "a-very-long-process-name"], watch_mounts=[])
    assert guard.bypass == frozenset({"a-very-long-pro"})  # compared as the kernel truncates


# --------------------------------------------------------------------------- files


def test_protected_file_changed_by_someone_else_is_restored_and_reported(tmp_path, rt):
    policy = tmp_path / "policies" / "managed" / "classroom.json"
    guard = Guard(bypass_processes=[], watch_mounts=[], poll_seconds=3600)
    guard.start(rt)
    try:
        good = b'{"URLBlocklist": ["*"]}'
        guard.write(policy, good)
        assert policy.read_bytes() == good and rt.of_type("tamper") == []
        policy.write_bytes(b'{"URLBlocklist": []}')  # a pupil (or a script) edits it
        wait_until(lambda: rt.posted.qsize() > 0, timeout=10, message="watchdog saw nothing")
        rt.run_posted()
        assert policy.read_bytes() == good
        [ev] = rt.of_type("tamper")
        assert ev["path"] == str(policy) and ev["action"] == "restored" and ev["change"] == "modified"
        assert ev["found_sha256"] != ev["expected_sha256"]
        policy.unlink()
        wait_until(lambda: policy.exists(), timeout=10, message="deleted file not restored")
        rt.run_posted()
        assert rt.of_type("tamper")[-1]["change"] == "deleted"
        assert policy.read_bytes() == good and oct(policy.stat().st_mode & 0o777) == oct(0o644)
    finally:
        guard.stop()


def test_the_agents_own_updates_are_not_tamper(tmp_path, rt):
    path = tmp_path / "dnsmasq.conf"
    guard = Guard(bypass_processes=[], watch_mounts=[], use_watchdog=False)
    guard.runtime = rt
    guard.write(path, b"one\n")
    guard.protect(path, b"two\n")  # the filter component registers, then writes
    path.write_bytes(b"two\n")
    assert guard.check_files() == [] and rt.events == []
    guard.unprotect(path)
    path.write_bytes(b"three\n")
    assert guard.check_files() == []
    assert guard.check_file(tmp_path / "never-registered") is None


# --------------------------------------------------------------------------- mounts


def test_mount_changes_are_reported(tmp_path, rt):
    table = {}
    guard = Guard(bypass_processes=[], watch_mounts=[str(tmp_path)], mounts_fn=lambda roots: dict(table),
                  use_watchdog=False)
    guard.start(rt)
    try:
        table[str(tmp_path / "pupil" / "USB")] = {"block_device": "/dev/sda1", "fstype": "vfat"}
        guard.check_mounts()
        [ev] = rt.of_type("removable_media")
        assert (ev["action"], ev["block_device"], ev["fstype"]) == ("mounted", "/dev/sda1", "vfat")
        table.clear()
        guard.check_mounts()
        assert rt.of_type("removable_media")[-1]["action"] == "unmounted"
    finally:
        guard.stop()


@pytest.mark.integration
def test_a_real_mount_under_a_watched_directory_is_reported(tmp_path, rt):
    media = tmp_path / "media"
    (media / "pupil").mkdir(parents=True)
    guard = Guard(bypass_processes=[], watch_mounts=[str(media)], poll_seconds=3600)
    guard.start(rt)
    usb = media / "pupil" / "USBSTICK"
    usb.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "classroom-test-usb", str(usb)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        guard.stop()
        skip_or_fail(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        def reported():
            while rt.posted.qsize():
                rt.run_posted()
            return [e for e in rt.of_type("removable_media") if e["action"] == "mounted"]
        [ev] = wait_until(reported, timeout=10, message="mount not reported")
        assert ev["mountpoint"] == str(usb) and ev["block_device"] == "classroom-test-usb"
    finally:
        subprocess.run(["umount", str(usb)], check=False)
        guard.stop()
    assert str(usb) not in read_mounts([str(media)])


def test_browser_policies_written_by_the_filter_are_guarded(tmp_path, rt):
    """The filter's Chromium/Firefox policy writes register with the guard, so an edit is undone."""
    from agent.filter import browser

    managed, firefox = tmp_path / "chromium" / "managed", tmp_path / "firefox"
    guard = Guard(bypass_processes=[], watch_mounts=[], poll_seconds=3600)
    guard.start(rt)
    try:
        browser.write_chromium(managed, {"URLBlocklist": ["*"]}, guard.protect)
        browser.write_firefox(firefox, {"WebsiteFilter": {"Block": ["<all_urls>"]}}, guard.protect)
        good = (managed / browser.CHROMIUM_FILE).read_bytes()
        # The agent's own rewrite is not tamper...
        browser.write_chromium(managed, {"URLBlocklist": ["*"], "IncognitoModeAvailability": 1}, guard.protect)
        good = (managed / browser.CHROMIUM_FILE).read_bytes()
        (managed / browser.CHROMIUM_FILE).write_text('{"URLBlocklist": []}')  # ...a pupil's edit is
        wait_until(lambda: rt.posted.qsize() > 0, timeout=10, message="watchdog saw nothing")
        wait_until(lambda: (rt.run_posted() or True) and (managed / browser.CHROMIUM_FILE).read_bytes() == good,
                   timeout=10, message="policy not restored")
        assert [e["path"] for e in rt.of_type("tamper")] == [str(managed / browser.CHROMIUM_FILE)]
        assert guard.expected_sha256(firefox / browser.FIREFOX_FILE) is not None
    finally:
        guard.stop()
