"""Desktop notifications for new and escalated alerts, via ``notify-send`` (libnotify)
when it is installed; fire and forget, so a missing desktop session never delays the
terminal view."""

from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Callable

from . import PROG
from .board import Alert
from .view import local_time

log = logging.getLogger(PROG)


class Notifier:
    """Desktop notifications via ``notify-send`` (libnotify), when it is installed."""

    def __init__(self, runner: Callable[[list[str]], object] | None = None, binary: str | None = "auto") -> None:
        self.binary = shutil.which("notify-send") if binary == "auto" else binary
        self.runner = runner or self._run

    @property
    def is_available(self) -> bool:
        return bool(self.binary)

    @staticmethod
    def _run(argv: list[str]) -> None:
        # Fire and forget: a missing desktop session must never delay the terminal view.
        try:
            subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError as exc:
            log.warning("notify-send failed: %s", exc)

    def notify(self, alert: Alert) -> None:
        if not self.binary:
            return
        where = f"{alert.seat} ({alert.device})" if alert.seat else alert.device
        if alert.state == "escalated":
            summary = f"Report in {alert.room} escalated"
            body = f"{where}: nobody answered; escalated to {alert.escalated_to or 'the DSL'}"
        else:
            summary = f"Report in {alert.room}"
            body = f"{where} pressed 'I saw something' at {local_time(alert.ts)}. Press a to say you're coming."
        self.runner([self.binary, "--urgency=critical", f"--app-name={PROG}", "--icon=dialog-warning",
                     summary, body])
