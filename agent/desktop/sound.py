"""Short recorded messages on pupil screens: which recording, which player, as whom.

A child who cannot read yet hears the words: the report blank ("Well done for telling. A
grown-up is coming."), the acknowledgement, the lock, the acceptable-use rules.  The
recordings ship with the project (agent/desktop/assets/sounds/<language>/<key>.wav, made
by scripts/make_assets.py; ``manifest.json`` says which words each one speaks).  A
recording is played only when the screen shows exactly its words: a school that wrote its
own words gets a soft chime instead (``chime.wav``), never a voice saying something else.

The player is the desktop's own, run as the session user (agent/desktop/session.py:
``session_command``) so the sound comes out of that user's audio session: ``pw-play``
(PipeWire, Raspberry Pi OS Bookworm and later), else ``paplay`` (PulseAudio), else
``aplay`` (ALSA; it has no volume setting, so the device's mixer level applies).  The
volume is the key stage's ``sound.volume`` (0-100).  One message at a time: a new one
stops the one playing.  Playing never waits: it is a process start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Sequence

from .session import CommandRunner, Session, session_command

log = logging.getLogger(__name__)

__all__ = ["PLAYERS", "SOUNDS", "SoundPlayer", "recording"]

SOUNDS = Path(__file__).resolve().parent / "assets" / "sounds"
PLAYERS = ("pw-play", "paplay", "aplay")


def _manifest() -> dict[str, dict[str, str]]:
    try:
        data = json.loads((SOUNDS / "manifest.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def recording(language: str, key: str, text: str) -> Path:
    """The file to play for *key* showing *text* in *language*: its recording when the
    words are the recorded ones, else the chime."""
    recorded = _manifest().get(language, {}).get(key)
    path = SOUNDS / language / f"{key}.wav"
    if recorded is not None and recorded == str(text) and path.exists():
        return path
    return SOUNDS / "chime.wav"


def player_argv(player: str, path: Path, volume: int) -> list[str]:
    """argv for *player* playing *path* at *volume* per cent."""
    name = os.path.basename(player)
    volume = max(0, min(100, int(volume)))
    if name == "pw-play":
        return [player, f"--volume={volume / 100:.2f}", str(path)]
    if name == "paplay":
        return [player, f"--volume={round(65536 * volume / 100)}", str(path)]
    return [player, "-q", str(path)]  # aplay: the mixer's level


class SoundPlayer:
    """``play(session, language, key, text, volume)`` -> the process, or None when there is
    nothing to play with or on.  *players*: the candidates, first found wins (tests give
    one); *extra_args*: appended before the file (tests: ``aplay -D null``)."""

    def __init__(self, runner: CommandRunner | None = None, players: Sequence[str] = PLAYERS,
                 which: Callable[[str], str | None] = shutil.which, extra_args: Sequence[str] = ()):
        self.runner = runner or CommandRunner()
        self.players = tuple(players)
        self.which = which
        self.extra_args = list(extra_args)
        self._proc = None
        self._lock = threading.Lock()
        self.played: list[tuple[str, str, str]] = []  # (language, key, file) of each play, newest last

    def player(self) -> str | None:
        for name in self.players:
            found = self.which(name)
            if found:
                return found
        return None

    def play(self, session: Session | None, language: str, key: str, text: str, volume: int = 60):
        if volume <= 0:
            return None
        player = self.player()
        if player is None:
            log.info("no sound player (%s) installed; %s is not spoken", ", ".join(self.players), key)
            return None
        path = recording(language, key, text)
        # The player runs as the pupil, who may not be able to read the agent's install: the
        # agent opens the recording and the player reads it from its stdin.
        argv = player_argv(player, Path("/dev/stdin"), volume)
        argv = argv[:-1] + self.extra_args + argv[-1:]
        argv, env = session_command(session, argv)
        with self._lock:
            self._stop_locked()
            try:
                self._proc = self.runner.spawn(argv, env=env, stdin_path=str(path))
            except OSError as exc:
                log.warning("cannot play %s: %s", path.name, exc)
                return None
            self.played.append((language, key, path.name))
            del self.played[:-20]
            return self._proc

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                proc.terminate()
            except OSError:
                pass

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()


class SilentPlayer(SoundPlayer):
    """No speakers (servers, simulated devices): remembers what it would have played."""

    def play(self, session, language: str, key: str, text: str, volume: int = 60):
        if volume > 0:
            self.played.append((language, key, recording(language, key, text).name))
            del self.played[:-20]
        return None
