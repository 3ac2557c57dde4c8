"""Where this device last knew it was: ``state_dir/place.json``.

A press must reach a teacher even before any config has loaded: the first boot with
the Wi-Fi down, or a cached config that is damaged (issue 13, "nothing lost on the
device").  So whenever a config applies, the runtime keeps the little it needs to
address and arm a report without one: the site, room and seat, the topic prefix and
the button's pins.  Enrolment may write it too, when the collector's registry knows
the device's room (``save_place``).  It holds nothing secret.

The file is replaced with ``agent.files.atomic_write`` (durable: a power cut must not
lose it), off the press path (when a config applies).  One that is missing is normal on
a new device; one that does not parse or names another site is reported and ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import protocol
from ..files import atomic_write

__all__ = ["PLACE_FILE", "Place", "load_place", "save_place"]

PLACE_FILE = "place.json"


@dataclass(frozen=True)
class Place:
    site: str
    room: str | None = None
    seat: str = ""
    prefix: str = protocol.DEFAULT_PREFIX
    hardware: dict[str, Any] = field(default_factory=dict)  # agent.config.schema.Hardware fields

    @classmethod
    def of(cls, policy, prefix: str) -> "Place":
        """The place a policy puts this device in."""
        return cls(site=policy.site, room=policy.room, seat=policy.seat or "", prefix=prefix,
                   hardware=policy.hardware.model_dump(mode="json"))

    def hardware_model(self):
        """The button and LED pins as the schema's ``Hardware``, or None if there are none."""
        if not self.hardware:
            return None
        from ..config.schema import Hardware

        return Hardware.model_validate(self.hardware)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, site: str) -> "Place":
        """Checked as strictly as a message: ValueError with a one-line reason."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("site") != site:
            raise ValueError(f"site: {data.get('site')!r} is not this device's site {site!r}")
        room = data.get("room")
        if room is not None and not (isinstance(room, str) and protocol.ID_RE.match(room)):
            raise ValueError(f"room: {room!r} is not a valid id")
        seat = data.get("seat") or ""
        prefix = data.get("prefix") or protocol.DEFAULT_PREFIX
        hardware = data.get("hardware") or {}
        if not isinstance(seat, str) or not isinstance(prefix, str) or not isinstance(hardware, dict):
            raise ValueError("seat, prefix and hardware must be a string, a string and an object")
        place = cls(site=site, room=room, seat=seat, prefix=prefix, hardware=hardware)
        try:
            place.hardware_model()
        except ValueError as exc:
            raise ValueError(f"hardware: {str(exc).splitlines()[0]}") from None
        return place


def place_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / PLACE_FILE


def load_place(state_dir: str | Path, site: str) -> tuple[Place | None, str | None]:
    """(place, None), (None, None) when there is none yet, or (None, problem) when the file is unusable."""
    path = place_path(state_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    except ValueError as exc:  # not UTF-8
        return None, f"unusable ({exc}); ignored"
    try:
        return Place.from_dict(json.loads(text), site), None
    except ValueError as exc:
        return None, f"unusable ({str(exc).splitlines()[0][:200]}); ignored"


def save_place(state_dir: str | Path, place: Place) -> Path:
    """Keep *place* (durable).  Raises OSError (a full disk) with the old file unchanged."""
    path = place_path(state_dir)
    atomic_write(path, json.dumps(place.to_dict(), sort_keys=True), 0o644)
    return path
