#!/usr/bin/env python3
"""Build the pupil screens' shipped pictures and recordings (run by hand; the results are committed).

* agent/desktop/assets/pictograms/*.svg are the source (drawn here as simple shapes, no
  stock imagery); each is rendered to a 256-pixel PNG beside it with ``rsvg-convert``
  (Tk draws PNG, not SVG).
* agent/desktop/assets/sounds/<language>/<key>.wav: the built-in words of
  agent/config/words.py spoken by ``espeak-ng`` (its own English and Welsh voices),
  slowed for young listeners and made 12 kHz mono 16-bit WAV with ``sox`` (espeak says little above 6 kHz; aplay reads only PCM); ``chime.wav`` is a soft
  two-note chime (``sox synth``), played when a school's own words have no recording.
  ``sounds/manifest.json`` records the words each file says: the agent plays a recording
  only when the screen shows exactly those words (agent/desktop/sound.py), and
  tests/test_pupil_screens.py checks the manifest against words.py.

Needs: librsvg2-bin, espeak-ng, sox (Debian).  Usage: ``python3 scripts/make_assets.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.config.words import BUILTIN  # noqa: E402

ASSETS = ROOT / "agent" / "desktop" / "assets"
SPOKEN = ("report_raised", "report_acknowledged", "locked", "out_of_hours", "blocked", "acceptable_use",
          "asked_teacher")
VOICES = {"en": "en-gb", "cy": "cy"}


def pictograms() -> None:
    for svg in sorted((ASSETS / "pictograms").glob("*.svg")):
        subprocess.run(["rsvg-convert", "-w", "256", "-h", "256", str(svg), "-o", str(svg.with_suffix(".png"))],
                       check=True)


def speak(text: str, voice: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        # -s 135 words a minute: slower than espeak's 175, for four- and five-year-olds.
        subprocess.run(["espeak-ng", "-v", voice, "-s", "135", "-g", "6", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "12000", "-c", "1", "-b", "16", str(out), "norm", "-3",
                        "fade", "0.02", "0", "0.05"], check=True)


def sounds() -> None:
    manifest: dict[str, dict[str, str]] = {}
    for language, voice in VOICES.items():
        folder = ASSETS / "sounds" / language
        folder.mkdir(parents=True, exist_ok=True)
        for key in SPOKEN:
            text = BUILTIN[language][key]
            speak(text, voice, folder / f"{key}.wav")
            manifest.setdefault(language, {})[key] = text
    chime = ASSETS / "sounds" / "chime.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(chime), "synth", "0.35", "sine", "660",
                    "synth", "0.35", "sine", "880", "remix", "-", "fade", "0.02", "0.7", "0.3", "vol", "0.4"],
                   check=False)
    if not chime.exists() or chime.stat().st_size < 1000:
        # Older sox builds refuse two synth effects in one chain: make the notes apart and join them.
        with tempfile.TemporaryDirectory() as tmp:
            a, b = Path(tmp) / "a.wav", Path(tmp) / "b.wav"
            for path, freq in ((a, "660"), (b, "880")):
                subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(path), "synth", "0.3", "sine",
                                freq, "fade", "0.02", "0.3", "0.15", "vol", "0.4"], check=True)
            subprocess.run(["sox", str(a), str(b), str(chime)], check=True)
    (ASSETS / "sounds" / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False,
                                                                sort_keys=True) + "\n")


if __name__ == "__main__":
    pictograms()
    sounds()
    print("assets written under", ASSETS)
