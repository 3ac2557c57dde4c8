"""Tamper and bypass guard: bypass tools, removable media, the files the agent writes, its screens.

* **Processes** -- known filtering bypass tools and unapproved browsers
  (``site.guard.bypass_processes``: Tor, VPN clients, proxies, other browsers) are
  reported as ``bypass_process`` and, where ``site.guard.end_bypass_processes``, ended
  (SIGTERM, then SIGKILL; the unit grants CAP_KILL for exactly this).  Names come from
  ``/proc/PID/comm``, re-read every scan because psutil caches a process's name and an
  ``exec`` keeps the PID; a new PID's ``argv[0]`` is checked too.  psutil does the rest.
  A renamed tool (``cp /usr/bin/tor ~/x; ~/x``, or a link to it) has neither name, so
  the tools installed on the device are also known by path and SHA-256
  (``search_path``), and the executable of every other new process of a person's
  account (uid >= 1000) is looked at: ``/proc/PID/exe`` of another user's process is
  closed to the agent (no CAP_SYS_PTRACE), so a small helper runs *as that user* (the
  one way to run a program as a user, agent/desktop/session.py) and says where each
  executable is, and the SHA-256 of those outside the system's own directories (for a
  program that hides even from its own user, as Tor does, the file its argv[0] names).
  Limits: a copy that was changed by one byte, a tool never installed on the device,
  or one run by an interpreter (``python3 tor.py``) is not recognised this way; the
  DNS filter, nftables and the school's upstream filter are what stop those.
* **Removable media** -- a mount appearing under ``site.guard.watch_mounts`` (``/media``,
  ``/run/media``) is reported as ``removable_media``.  Triggers: watchdog on those
  directories (udisks creates the mount point) and the kernel's mount-table change
  notification (POLLPRI on /proc/self/mounts), with a slow scan as a backstop.
* **Tamper** -- other components register the files they write (``guard.protect(path,
  content)`` *before* writing, or ``guard.write(path, content)``); if anyone else changes
  or deletes one, the guard puts the agent's version back and reports ``tamper``.  The
  desktop's report blank and lock put themselves back when something undoes them
  (agent/desktop/overlay.py); the guard reports that as ``tamper`` too, with ``screen``
  (``blank`` or ``lock``) and ``what``.

Evidence is names, paths and times only: never file contents or full command lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import select
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import psutil

from ..desktop.session import CommandRunner, as_session_user
from ..files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["Guard", "comm_names", "read_mounts"]

COMM_LEN = 15  # the kernel truncates /proc/PID/comm to 15 characters
SYSTEM_UID_MAX = 1000  # Debian's UID_MIN: below it are system accounts, not people
# Where the device's own programs are installed: the bypass tools found here are known by
# path and hash.  Executables under SYSTEM_DIRS are root's: only their path is compared.
SEARCH_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/", "/snap/")
HASH_LIMIT = 256 * 1024 * 1024  # bigger executables are not hashed (no bypass tool is this big)

# Run as the process's own user: where each executable is, and the SHA-256 of those
# outside the system directories.  A program that made itself non-dumpable (Tor does, by
# default) hides /proc/PID/exe even from its own user: then its argv[0] (absolute, or
# relative to the user's home) names the file instead.  Standard library only (it runs on
# /usr/bin/python3).
EXE_HELPER = r"""
import hashlib, json, os, sys
system, limit = tuple(json.loads(sys.argv[1])), int(sys.argv[2])
for pid in sys.argv[3:]:
    try:
        exe, source = os.readlink("/proc/%s/exe" % pid), "/proc/%s/exe" % pid
    except OSError:
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
        except OSError:
            continue
        if "/" not in argv0:
            continue  # found on PATH: one of the system's own
        exe = source = os.path.realpath(os.path.join(os.path.expanduser("~"), argv0))
    out = {"pid": int(pid), "exe": exe}
    if not exe.startswith(system):
        try:
            digest, size = hashlib.sha256(), 0
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    size += len(chunk)
                    if size > limit:
                        digest = None
                        break
                    digest.update(chunk)
            if digest is not None:
                out["sha256"] = digest.hexdigest()
        except OSError:
            pass
    print(json.dumps(out), flush=True)
"""


def comm_names(proc_root: str = "/proc") -> dict[int, str]:
    """{pid: comm} for every process, straight from /proc (cheap, and never stale)."""
    names: dict[int, str] = {}
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return names
    for entry in entries:
        if not entry.isdigit():
            continue
        # os.open/os.read rather than open(): this runs every few seconds over every
        # process, and the buffered file object costs more than the read itself.
        try:
            fd = os.open(f"{proc_root}/{entry}/comm", os.O_RDONLY)
        except OSError:
            continue  # exited between listdir and open
        try:
            names[int(entry)] = os.read(fd, 64).decode("utf-8", "replace").strip()
        except OSError:
            continue
        finally:
            os.close(fd)
    return names


def read_mounts(roots: Iterable[str]) -> dict[str, dict]:
    """{mountpoint: {block_device, fstype}} for mounts at or below any of *roots*."""
    roots = [str(Path(r)) for r in roots]
    found = {}
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        for root in roots:
            if mount == root or mount.startswith(root.rstrip("/") + "/"):
                found[mount] = {"block_device": part.device, "fstype": part.fstype}
                break
    return found


@dataclass
class _Protected:
    sha256: str
    content: bytes
    mode: int


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


class Guard:
    """The guard component (``name = "guard"``); see the module docstring."""

    name = "guard"

    def __init__(self, bypass_processes: Iterable[str] | None = None, end_bypass_processes: bool | None = None,
                 watch_mounts: Iterable[str] | None = None, poll_seconds: float = 5.0,
                 proc_root: str = "/proc", mounts_fn: Callable[[Iterable[str]], dict] = read_mounts,
                 use_watchdog: bool = True, search_path: Iterable[str] = SEARCH_PATH, runner=None):
        self._bypass_arg = bypass_processes
        self._end_arg = end_bypass_processes
        self._mounts_arg = watch_mounts
        self.bypass: frozenset[str] = frozenset()
        self.end_bypass = True
        self.watch_mounts: tuple[str, ...] = ()
        self.poll_seconds = poll_seconds
        self.proc_root = proc_root
        self.mounts_fn = mounts_fn
        self.use_watchdog = use_watchdog
        self.search_path = tuple(search_path)
        self.runner = runner or CommandRunner()
        self.known_paths: dict[str, str] = {}   # realpath of an installed bypass tool -> its name
        self.known_hashes: dict[str, str] = {}  # its SHA-256 -> its name
        self._hash_cache: dict[tuple, str] = {}
        self.runtime = None
        self._files: dict[str, _Protected] = {}
        self._files_lock = threading.Lock()
        self._check_lock = threading.Lock()  # the watchdog and scan threads both check files
        self._seen: dict[int, str] = {}  # pid -> comm at the last scan
        self._reported: set[tuple[int, str]] = set()
        self._mounts: dict[str, dict] | None = None
        self._observer = None
        self._watched_dirs: set[str] = set()
        self._stop = threading.Event()
        self._wake_r = self._wake_w = None  # a pipe that wakes the mount-table thread to stop
        self._threads: list[threading.Thread] = []
        self._configure(None)

    # ------------------------------------------------------------------ configuration
    def _configure(self, site_guard) -> None:
        names = self._bypass_arg if self._bypass_arg is not None else getattr(site_guard, "bypass_processes", [])
        self.bypass = frozenset(n.strip().lower()[:COMM_LEN] for n in names if n and n.strip())
        self._find_installed([n.strip() for n in names if n and n.strip()])
        end = self._end_arg if self._end_arg is not None else getattr(site_guard, "end_bypass_processes", True)
        self.end_bypass = bool(end)
        mounts = self._mounts_arg if self._mounts_arg is not None else getattr(site_guard, "watch_mounts", [])
        self.watch_mounts = tuple(str(m) for m in mounts if m)

    def _find_installed(self, names: list[str]) -> None:
        """Learn the path and SHA-256 of every bypass tool installed on the device."""
        paths, hashes = {}, {}
        for name in names:
            for directory in self.search_path:
                candidate = os.path.join(directory, name)
                try:
                    real = os.path.realpath(candidate)
                    st = os.stat(real)
                except OSError:
                    continue
                if not os.path.isfile(real) or st.st_size > HASH_LIMIT:
                    continue
                if os.path.basename(real).lower() != name.lower():
                    # A link to some other program (a wrapper, an interpreter): matching
                    # its path or hash would catch everything else that program runs.
                    continue
                paths[candidate] = paths[real] = name.lower()[:COMM_LEN]
                key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
                digest = self._hash_cache.get(key)
                if digest is None:
                    try:
                        with open(real, "rb") as f:
                            digest = hashlib.file_digest(f, "sha256").hexdigest()
                    except OSError:
                        continue
                    self._hash_cache[key] = digest
                hashes[digest] = name.lower()[:COMM_LEN]
        self.known_paths, self.known_hashes = paths, hashes

    def _site_guard(self):
        tree = self.runtime.tree if self.runtime is not None else None
        return tree.site.guard if tree is not None else None

    # ------------------------------------------------------------------ Component (agent/core/interfaces.py)
    def start(self, runtime) -> None:
        self.runtime = runtime
        self._configure(self._site_guard())
        self._watch_screens(getattr(runtime, "desktop", None))
        if runtime.policy is not None:
            self._first_policy()
        if self.use_watchdog:
            self._start_watchdog()
        self._wake_r, self._wake_w = os.pipe()
        for target, name in ((self._scan_loop, "guard-scan"), (self._mount_table_loop, "guard-mounts")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            os.write(self._wake_w, b"x")
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None
        for t in self._threads:
            t.join(5)
        for fd in (self._wake_r, self._wake_w):
            if fd is not None:
                os.close(fd)
        self._wake_r = self._wake_w = None

    def on_policy(self, policy) -> None:
        before = self.watch_mounts
        self._configure(self._site_guard())
        if before != self.watch_mounts:
            self._watch_roots()
        if self._mounts is None:
            self._first_policy()

    def _first_policy(self) -> None:
        # Components start before the first config is loaded; events need a room.
        self._mounts = self.mounts_fn(self.watch_mounts)
        for mount, info in sorted(self._mounts.items()):
            # Already there when the agent started (a USB stick in before boot): still worth a line.
            self._emit("removable_media", action="present", mountpoint=mount, **info)

    def on_command(self, cmd: dict) -> bool:
        return False

    # ------------------------------------------------------------------ events
    def _emit(self, kind: str, **fields) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        if runtime.on_queue_thread():
            runtime.emit_event(kind, **fields)
        else:
            # The guard's own threads hand events to the queue thread, like every edge does.
            runtime.post(lambda: runtime.emit_event(kind, **fields))

    def _watch_screens(self, desktop) -> None:
        """Report what the desktop's blank and lock say was done to them (they restore themselves)."""
        if desktop is None:
            return
        for part, screen in ((desktop.screen, "blank"), (desktop.lock, "lock"),
                             (getattr(desktop, "button", None), "button")):
            if part is not None:
                part.when_tampered = lambda fields, screen=screen: self._screen_tamper(screen, fields)

    def _screen_tamper(self, screen: str, fields: dict) -> None:
        runtime = self.runtime
        user = None
        try:
            user = runtime.current_user() if runtime is not None else None
        except Exception:  # noqa: BLE001 - an unknown user is fine in an event
            pass
        self._emit("tamper", screen=screen, user=user, **fields)

    # ------------------------------------------------------------------ processes
    def _match(self, comm: str, pid: int, new: bool) -> tuple[str, str] | None:
        """(tool, "name" | "argv0") when the process is named like a bypass tool."""
        name = comm.lower()[:COMM_LEN]
        if name in self.bypass:
            return name, "name"
        if new:
            try:
                with open(f"{self.proc_root}/{pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
            except OSError:
                return None
            base = os.path.basename(argv0).lower()[:COMM_LEN]
            if base in self.bypass:
                return base, "argv0"
        return None

    def check_processes(self) -> list[dict]:
        """One scan: report (and maybe end) bypass tools; returns the events' fields."""
        if not self.bypass:
            return []
        names = comm_names(self.proc_root)
        found = []
        me = os.getpid()
        unknown: dict[int, list[int]] = {}  # uid -> new processes no name matched
        for pid, comm in names.items():
            if pid == me:
                continue
            new = self._seen.get(pid) != comm
            if not new:
                continue  # same process, same program as last scan: already judged
            match = self._match(comm, pid, new)
            if match is None:
                if self.known_paths or self.known_hashes:
                    uid = self._uid(pid)
                    if uid is not None and uid >= SYSTEM_UID_MAX:
                        unknown.setdefault(uid, []).append(pid)
                continue
            if (pid, match[0]) in self._reported:
                continue
            found.append(self._handle_bypass(pid, match[0], matched=match[1]))
        for uid, pids in unknown.items():
            for pid, name, how, exe in self._match_executables(uid, pids):
                if (pid, name) not in self._reported:
                    found.append(self._handle_bypass(pid, name, matched=how, exe=exe))
        self._seen = names
        self._reported = {(pid, name) for pid, name in self._reported if pid in names}
        return [f for f in found if f]

    def _uid(self, pid: int) -> int | None:
        """The real uid (from status: /proc/PID itself is root's once a process is non-dumpable)."""
        try:
            with open(f"{self.proc_root}/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _match_executables(self, uid: int, pids: list[int]) -> list[tuple[int, str, str, str]]:
        """(pid, tool, "path" | "sha256", executable) for *pids* (all *uid*'s) running a
        copy of, or a link to, an installed bypass tool; asked of a helper run as *uid*."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return []
        user = entry.pw_name
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        argv = as_session_user(user, {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": entry.pw_dir},
                               [python, "-I", "-S", "-c", EXE_HELPER, json.dumps(SYSTEM_DIRS), str(HASH_LIMIT),
                                *map(str, pids)])
        try:
            out = self.runner.run(argv, timeout=30)
        except Exception as exc:  # noqa: BLE001 - the name checks still ran
            log.warning("guard: cannot look at %s's programs: %s", user, exc)
            return []
        matches = []
        for line in (out.stdout or "").splitlines():
            try:
                row = json.loads(line)
                pid, exe = int(row["pid"]), str(row["exe"])
            except (ValueError, KeyError, TypeError):
                continue
            if pid not in pids:
                continue
            path = exe[:-len(" (deleted)")] if exe.endswith(" (deleted)") else exe
            if path in self.known_paths:
                matches.append((pid, self.known_paths[path], "path", path))
            elif row.get("sha256") in self.known_hashes:
                matches.append((pid, self.known_hashes[row["sha256"]], "sha256", exe))
        return matches

    def _handle_bypass(self, pid: int, name: str, **how) -> dict | None:
        try:
            proc = psutil.Process(pid)
            uid = proc.uids().real
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            uid = None
        try:
            user = proc.username()
        except (psutil.Error, KeyError):
            user = str(uid) if uid is not None else None
        action = "reported"
        if self.end_bypass and uid is not None and uid < SYSTEM_UID_MAX:
            # A system account's process was installed by whoever has root (a technician),
            # not a pupil: report it, but ending it would only fight systemd's restarts.
            action = "reported_system"
        elif self.end_bypass:
            action = "ended" if self._end(proc) else "end_failed"
        self._reported.add((pid, name))
        fields = {"name": name, "pid": pid, "user": user, "action": action, **how}
        log.warning("bypass process %s (pid %s, user %s, matched by %s): %s", name, pid, user,
                    how.get("matched"), action)
        self._emit("bypass_process", **fields)
        return fields

    @staticmethod
    def _end(proc: psutil.Process) -> bool:
        try:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
            return True
        except psutil.NoSuchProcess:
            return True
        except (psutil.Error, OSError) as exc:
            log.error("cannot end pid %s: %s", proc.pid, exc)
            return False

    # ------------------------------------------------------------------ removable media
    def check_mounts(self) -> list[dict]:
        try:
            now = self.mounts_fn(self.watch_mounts)
        except Exception as exc:  # noqa: BLE001 - a bad read must not stop the guard
            log.warning("cannot read mounts: %s", exc)
            return []
        if self._mounts is None:
            return []  # no baseline before the first policy
        before = self._mounts
        changes = []
        for mount in sorted(set(now) - set(before)):
            changes.append({"action": "mounted", "mountpoint": mount, **now[mount]})
        for mount in sorted(set(before) - set(now)):
            changes.append({"action": "unmounted", "mountpoint": mount, **before[mount]})
        self._mounts = now
        for change in changes:
            self._emit("removable_media", **change)
        return changes

    def _mount_table_loop(self) -> None:
        """Wake on the kernel's mount-table change (POLLPRI on /proc/self/mounts)."""
        try:
            mounts = open("/proc/self/mounts", "rb")
        except OSError:
            return
        with mounts:
            poller = select.poll()
            poller.register(mounts.fileno(), select.POLLPRI | select.POLLERR)
            poller.register(self._wake_r, select.POLLIN)
            mounts.read()
            while not self._stop.is_set():
                events = poller.poll()
                if self._stop.is_set():
                    return
                if any(fd == mounts.fileno() for fd, _ in events):
                    mounts.seek(0)
                    mounts.read()
                    self.check_mounts()

    # ------------------------------------------------------------------ protected files
    def protect(self, path: str | os.PathLike, content: bytes, mode: int | None = None) -> None:
        """Register *content* as the only acceptable content of *path* (call before writing it)."""
        path = os.path.abspath(path)
        if mode is None:
            try:
                mode = os.stat(path).st_mode & 0o7777
            except OSError:
                mode = 0o644
        with self._files_lock:
            self._files[path] = _Protected(_sha(content), bytes(content), mode)
        if self._observer is not None:
            self._watch_dir(os.path.dirname(path))

    def unprotect(self, path: str | os.PathLike) -> None:
        with self._files_lock:
            self._files.pop(os.path.abspath(path), None)

    def write(self, path: str | os.PathLike, content: bytes, mode: int = 0o644) -> None:
        """Write a file the agent owns: registered first, then replaced atomically."""
        self.protect(path, content, mode)
        _atomic_write(os.path.abspath(path), content, mode)
        self._watch_dir(os.path.dirname(os.path.abspath(path)))  # the directory may be new

    def expected_sha256(self, path: str | os.PathLike) -> str | None:
        with self._files_lock:
            entry = self._files.get(os.path.abspath(path))
        return entry.sha256 if entry else None

    def check_file(self, path: str | os.PathLike) -> dict | None:
        """Restore *path* if it differs from what the agent wrote; return the tamper fields."""
        path = os.path.abspath(path)
        with self._check_lock:
            return self._check_file_locked(path)

    def _check_file_locked(self, path: str) -> dict | None:
        with self._files_lock:
            entry = self._files.get(path)
        if entry is None:
            return None
        try:
            with open(path, "rb") as f:
                found = f.read()
        except FileNotFoundError:
            found = None
        except OSError as exc:
            log.warning("cannot read protected %s: %s", path, exc)
            return None
        found_sha = _sha(found)
        if found_sha == entry.sha256:
            return None
        try:
            _atomic_write(path, entry.content, entry.mode)
            action = "restored"
        except OSError as exc:
            log.error("cannot restore %s: %s", path, exc)
            action = "restore_failed"
        fields = {"path": path, "action": action, "change": "deleted" if found is None else "modified",
                  "expected_sha256": entry.sha256, "found_sha256": found_sha}
        log.warning("tamper: %s was %s; %s", path, fields["change"], action)
        self._emit("tamper", **fields)
        return fields

    def check_files(self) -> list[dict]:
        with self._files_lock:
            paths = list(self._files)
        return [f for f in (self.check_file(p) for p in paths) if f]

    # ------------------------------------------------------------------ watchdog
    def _start_watchdog(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        guard = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.event_type in ("opened", "closed_no_write"):
                    return
                paths = {os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")}
                with guard._files_lock:
                    hits = [p for p in paths if p in guard._files]
                for p in hits:
                    guard.check_file(p)
                if any(p.startswith(root.rstrip("/") + "/") for p in paths for root in guard.watch_mounts):
                    if event.is_directory and event.event_type == "created":
                        guard._watch_dir(os.fsdecode(event.src_path))
                    guard.check_mounts()

        self._handler = Handler()
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.start()
        self._watch_roots()
        with self._files_lock:
            dirs = {os.path.dirname(p) for p in self._files}
        for d in dirs:
            self._watch_dir(d)

    def _watch_roots(self) -> None:
        for root in self.watch_mounts:
            self._watch_dir(root)
            # /media/<user>/<label>: udisks makes the per-user level first.
            try:
                for child in os.scandir(root):
                    if child.is_dir(follow_symlinks=False) and not os.path.ismount(child.path):
                        self._watch_dir(child.path)
            except OSError:
                pass

    def _watch_dir(self, directory: str) -> None:
        if self._observer is None or directory in self._watched_dirs or not os.path.isdir(directory):
            return
        try:
            # Never recursive: a USB stick's own files are none of our business.
            self._observer.schedule(self._handler, directory, recursive=False)
            self._watched_dirs.add(directory)
        except OSError as exc:
            log.warning("cannot watch %s: %s", directory, exc)

    # ------------------------------------------------------------------ the scan thread
    def _scan_loop(self) -> None:
        last_full = 0.0
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check_processes()
                if time.monotonic() - last_full >= 60:
                    # Backstops for anything the event sources missed.
                    last_full = time.monotonic()
                    with self._files_lock:
                        dirs = {os.path.dirname(p) for p in self._files}
                    for d in dirs:
                        self._watch_dir(d)  # directories created since they were registered
                    self.check_files()
                    self.check_mounts()
            except Exception:  # noqa: BLE001 - the guard must keep guarding
                log.exception("guard scan failed")


def _atomic_write(path: str, content: bytes, mode: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, content, mode)
