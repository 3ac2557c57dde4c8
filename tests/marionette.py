"""A minimal Marionette client: drive a real headless Firefox from tests without geckodriver.

Marionette is Firefox's own remote protocol (what geckodriver speaks to): ``len:json``
frames over TCP, commands as ``[0, id, name, params]``, answers as ``[1, id, error,
result]``.  Firefox starts with ``--marionette`` and listens on the port set by the
profile's ``marionette.port``.  Enough for navigating, reading the page and, with
``-remote-allow-system-access``, reading preferences and the active enterprise policies.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from services import free_port, spawn, terminate


class MarionetteError(RuntimeError):
    pass


class Firefox:
    def __init__(self, binary: str, profile: Path, prefs: dict | None = None, timeout: float = 60.0):
        self.port = free_port()
        profile.mkdir(parents=True, exist_ok=True)
        lines = [f'user_pref("marionette.port", {self.port});',
                 'user_pref("browser.shell.checkDefaultBrowser", false);',
                 'user_pref("app.update.disabledForTesting", true);',
                 'user_pref("datareporting.policy.dataSubmissionEnabled", false);',
                 'user_pref("network.captive-portal-service.enabled", false);',
                 'user_pref("browser.safebrowsing.update.enabled", false);']
        lines += [f"user_pref({json.dumps(k)}, {json.dumps(v)});" for k, v in (prefs or {}).items()]
        (profile / "user.js").write_text("\n".join(lines) + "\n")
        self.proc = spawn([binary, "--headless", "--marionette", "-remote-allow-system-access", "--no-remote",
                           "--profile", str(profile)], log_path=profile.parent / f"{profile.name}.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    terminate(self.proc)
                    raise MarionetteError(f"Firefox did not open Marionette on :{self.port}") from None
                time.sleep(0.1)
        self.file = self.sock.makefile("rb")
        self._id = 0
        self._read()  # {"applicationType": "gecko", "marionetteProtocol": 3}
        self.call("WebDriver:NewSession", {})

    def _read(self):
        size = b""
        while not size.endswith(b":"):
            byte = self.file.read(1)
            if not byte:
                raise MarionetteError("Firefox closed the Marionette connection")
            size += byte
        return json.loads(self.file.read(int(size[:-1])))

    def call(self, name: str, params: dict):
        """Run one command; returns its result, or raises MarionetteError with Firefox's message."""
        self._id += 1
        data = json.dumps([0, self._id, name, params]).encode()
        self.sock.sendall(str(len(data)).encode() + b":" + data)
        _, _, error, result = self._read()
        if error:
            raise MarionetteError(error.get("message", str(error)))
        return result

    def navigate(self, url: str) -> str:
        """Open *url*; returns the page source, or raises MarionetteError (e.g. blockedByPolicy)."""
        self.call("Marionette:SetContext", {"value": "content"})
        self.call("WebDriver:Navigate", {"url": url})
        return self.call("WebDriver:GetPageSource", {})["value"]

    def chrome(self, script: str):
        """Run privileged JavaScript (``Services`` is there); returns its value."""
        self.call("Marionette:SetContext", {"value": "chrome"})
        return self.call("WebDriver:ExecuteScript", {"script": script, "args": []})["value"]

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        terminate(self.proc)
