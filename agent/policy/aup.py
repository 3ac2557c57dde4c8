"""Acceptable use and the monitoring notice.

At a user's first login each term the profile's age-appropriate rules
(``policy.messages['acceptable_use']``) are shown with one big "I agree" button;
acceptance is recorded on disk (``state_dir/aup.json``: term -> user -> ts) and as an
``aup_accepted`` event.  A small notice (``policy.messages['monitoring_notice']``) stays
in a corner of the screen for the whole session: DfE expects users to be told that the
device is monitored.

The windows are tiny Tk programs (``python -m agent.aup dialog|notice``) run as the
desktop user, so they appear on that user's screen and nothing of the agent's
privileges reaches them.  Only the word ``accepted`` comes back on stdout.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import date
from pathlib import Path

from .files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["AcceptableUse", "AupRecords", "HeadlessPresenter", "TkPresenter", "term_key"]


def term_key(terms, day: date) -> str:
    """The term *day* falls in ('Autumn 2026'), else the academic term by month.

    Outside term (holiday clubs) the next term's name would be wrong, so the month rule
    applies: Sep-Dec autumn, Jan-Mar spring, Apr-Aug summer.
    """
    for term in terms or ():
        if term.start <= day <= term.end:
            return term.name
    season = "autumn" if day.month >= 9 else "spring" if day.month <= 3 else "summer"
    return f"{season} {day.year}"


class AupRecords:
    """Who accepted which term's rules; a small JSON file written atomically."""

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / "aup.json"
        self._data: dict[str, dict[str, str]] = {}
        try:
            loaded = json.loads(self.path.read_text())
            if isinstance(loaded, dict):
                self._data = {str(k): dict(v) for k, v in loaded.items() if isinstance(v, dict)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            # A damaged file means people see the rules again: the safe direction.
            log.warning("%s unreadable (%s); users will be asked to accept again", self.path, exc)

    def has_accepted(self, user: str, term: str) -> bool:
        return user in self._data.get(term, {})

    def record(self, user: str, term: str, ts: str) -> None:
        # Only this term's acceptances matter here (the server keeps the aup_accepted
        # events as the record), so earlier terms are dropped: data minimisation.
        self._data = {term: {**self._data.get(term, {}), user: ts}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(self._data, indent=1, sort_keys=True), 0o600)


class AcceptableUse:
    """Shows the rules and the notice for each desktop session (used by SessionsComponent)."""

    def __init__(self, runtime, presenter=None):
        self.runtime = runtime
        self.records = AupRecords(runtime.state_dir)
        if presenter is None:
            headless = getattr(getattr(runtime, "bootstrap", None), "screen_backend", "auto") == "headless"
            presenter = HeadlessPresenter() if headless else TkPresenter()
        self.presenter = presenter
        self._notices: dict[str, object] = {}
        self._dialogs: dict[str, object] = {}

    def _terms(self):
        tree = getattr(self.runtime, "tree", None)
        return getattr(getattr(tree, "site", None), "terms", None)

    def session_started(self, session) -> None:
        policy = self.runtime.policy
        messages = getattr(policy, "messages", {}) or {}
        notice = messages.get("monitoring_notice")
        if notice:
            self._notices[session.id] = self.presenter.notice(session, notice)
        term = term_key(self._terms(), self.runtime.clock().date())
        text = messages.get("acceptable_use")
        if text and not self.records.has_accepted(session.user, term) and session.id not in self._dialogs:
            def accepted(session=session, term=term):
                self.runtime.post(self._accepted, session, term)

            self._dialogs[session.id] = self.presenter.dialog(session, text, accepted)

    def _accepted(self, session, term: str) -> None:
        self._dialogs.pop(session.id, None)
        if self.records.has_accepted(session.user, term):
            return
        from .protocol import now_ts

        self.records.record(session.user, term, now_ts(self.runtime.clock()))
        self.runtime.emit_event("aup_accepted", user=session.user, term=term, session=session.id,
                                key_stage=getattr(self.runtime.policy, "key_stage", None))

    def session_ended(self, session) -> None:
        for table in (self._notices, self._dialogs):
            handle = table.pop(session.id, None)
            if handle is not None:
                self.presenter.close(handle)

    def close(self) -> None:
        for table in (self._notices, self._dialogs):
            for handle in table.values():
                self.presenter.close(handle)
            table.clear()


class HeadlessPresenter:
    """No screen (servers, simulated devices): remember what would be shown; nobody agrees."""

    def __init__(self):
        self.shown: list[tuple[str, str, str]] = []

    def notice(self, session, text: str):
        self.shown.append(("notice", session.id, text))
        return ("notice", session.id)

    def dialog(self, session, text: str, on_accept):
        self.shown.append(("dialog", session.id, text))
        return ("dialog", session.id)

    def close(self, handle) -> None:
        pass


class TkPresenter:
    """Runs the Tk windows as the desktop user; a reader thread waits for 'accepted'."""

    def __init__(self, runner=None):
        from .sessions import CommandRunner

        self.runner = runner or CommandRunner()

    def _spawn(self, session, kind: str, text: str):
        from .sessions import as_session_user, session_env

        argv = as_session_user(session.user, session_env(session),
                               [sys.executable, "-m", "agent.aup", kind])
        return self.runner.spawn(argv, stdin_text=text)

    def notice(self, session, text: str):
        return self._spawn(session, "notice", text)

    def dialog(self, session, text: str, on_accept):
        proc = self._spawn(session, "dialog", text)

        def wait():
            for line in proc.stdout or ():
                if line.strip() == "accepted":
                    on_accept()
                    return

        threading.Thread(target=wait, name="aup-dialog", daemon=True).start()
        return proc

    def close(self, proc) -> None:
        if proc.poll() is None:
            proc.terminate()


# --------------------------------------------------------------------------- the windows


def _dialog(text: str) -> int:  # pragma: no cover - exercised under Xvfb by hand
    import tkinter as tk

    root = tk.Tk()
    root.title("Our computer rules")
    root.attributes("-topmost", True)
    root.protocol("WM_DELETE_WINDOW", lambda: None)  # closing it is not agreeing
    tk.Label(root, text="Our computer rules", font=("sans", 22, "bold")).pack(padx=24, pady=(20, 8))
    tk.Label(root, text=text, font=("sans", 16), justify="left", wraplength=700).pack(padx=24, pady=8)

    def agree():
        print("accepted", flush=True)
        root.destroy()

    button = tk.Button(root, text="I agree", font=("sans", 20, "bold"), command=agree)
    button.pack(pady=(8, 24), ipadx=20, ipady=8)
    button.focus_set()
    button.bind("<Return>", lambda _e: agree())  # keyboard-only devices and switch access
    root.mainloop()
    return 0


def _notice(text: str) -> int:  # pragma: no cover
    import tkinter as tk

    root = tk.Tk()
    root.overrideredirect(True)  # no title bar, no close button: it is a notice, not a window
    root.attributes("-topmost", True)
    label = tk.Label(root, text=text, font=("sans", 9), wraplength=360, justify="left", bg="#ffffe0", padx=6, pady=3)
    label.pack()
    root.update_idletasks()
    root.geometry(f"+{root.winfo_screenwidth() - root.winfo_reqwidth() - 8}+"
                  f"{root.winfo_screenheight() - root.winfo_reqheight() - 40}")
    root.mainloop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    body = sys.stdin.read()
    sys.exit({"dialog": _dialog, "notice": _notice}.get(kind, lambda _t: 2)(body))
