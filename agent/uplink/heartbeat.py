"""The heartbeat payload: how a device is doing, every site.heartbeat_seconds (30 s default).

``collect(config_version)`` is all the runtime needs.  Every reading is cheap
(psutil reads /proc; no process is spawned and nothing sleeps), so calling it every 30 s
costs well under a millisecond of CPU.  Readings a device cannot give (no thermal zone on
a VM) are ``None`` rather than a guess.

Device health only: the heartbeat never names who is logged in.  Sending the user every
30 s would build a minute-by-minute record of a pupil that no one needs (data
minimisation); the user goes where it has a purpose (``login``/``logout``, ``blocked``,
``report_evidence``: docs/protocol.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from ..protocol import now_ts

__all__ = ["collect", "temperature"]

THERMAL_ROOT = Path("/sys/class/thermal")
# Prime psutil's CPU counter so the first heartbeat reports the load since import
# rather than 0.0; later calls measure the interval since the previous heartbeat.
psutil.cpu_percent(interval=None)


def temperature(thermal_root: Path = THERMAL_ROOT) -> float | None:
    """SoC temperature in °C: the Pi's cpu-thermal zone, else psutil's sensors, else None."""
    try:
        zones = sorted(thermal_root.glob("thermal_zone*"))
    except OSError:
        zones = []
    readings = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip()
            value = int((zone / "temp").read_text().strip()) / 1000.0
        except (OSError, ValueError):
            continue
        # The Pi exposes "cpu-thermal"; PCs "x86_pkg_temp" / "acpitz".  Prefer the CPU.
        readings.append((0 if "cpu" in kind or "pkg" in kind else 1, value))
    if readings:
        return round(sorted(readings)[0][1], 1)
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    try:
        found = sensors()
    except (OSError, RuntimeError):
        return None
    for name in ("cpu_thermal", "coretemp", "k10temp", "acpitz"):
        for entry in found.get(name, []):
            if entry.current is not None:
                return round(float(entry.current), 1)
    for entries in found.values():
        for entry in entries:
            if entry.current is not None:
                return round(float(entry.current), 1)
    return None


def collect(config_version: str | None, *, disk_path: str = "/") -> dict:
    """A heartbeat payload as in DESIGN.md: ts, cpu, mem, temp, disk, uptime, config_version."""
    try:
        disk = psutil.disk_usage(disk_path).percent
    except OSError:
        disk = None
    return {
        "ts": now_ts(),
        "cpu": round(psutil.cpu_percent(interval=None), 1),
        "mem": round(psutil.virtual_memory().percent, 1),
        "temp": temperature(),
        "disk": disk,
        "uptime": int(time.time() - psutil.boot_time()),
        "config_version": config_version,
    }
