"""The block page a child understands: the managed Chromium extension, and "Ask my teacher".

Without it a blocked site shows Chromium's own error page.  The extension
(agent/filter/extension/: Manifest V3, no content scripts, no host permissions) sends a
tab whose navigation the school refused (the browser allowlist, or the DNS filter's
NXDOMAIN) to its own page: the key stage's ``messages.blocked`` in the screen's language,
a picture, a recorded message, and an "Ask my teacher" button.  It reads the blocked
address's host name and nothing else, and never a page's content.

How it gets there, with no web store (``BlockPage``):

* the agent packs the extension as a CRX3 signed with a key of the device's own
  (``state_dir/blockpage-key.pem``, 0600, made once with ``openssl``; the extension's id
  is derived from it), writes it with an update manifest into ``blockpage_dir`` (which the
  browser, running as the pupil, can read; systemd's CacheDirectory), and the Chromium
  policy force-installs it from there (``ExtensionSettings``: ``force_installed`` with a
  ``file://`` update URL) and hands it its words through the policy's ``3rdparty``
  section (the extension's managed storage, schema.json);
* "Ask my teacher" goes to the native messaging host (agent/filter/ask_host.py, whose
  manifest in ``chromium_native_hosts_dir`` names only this extension; user-level hosts
  are switched off by policy), which passes the domain to the agent's control socket as
  the ``ask`` op.  ``AskTeacher`` checks it and sends an ``unblock_request`` event
  (domain, user, seat, profile), which the collector shows on the room page
  (server/http/api/unblock.py); the teacher can open the site for the lesson from there.
  A device may ask about one domain once a minute and about ``MAX_ASKS`` domains in ten
  minutes, so a pupil at a terminal cannot flood the teacher's page.

Firefox: a force-installed Firefox extension must be signed by Mozilla, so Firefox keeps
its own "blocked" page (its WebsiteFilter still blocks); docs/filtering.md says so.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

from ..config.schema import check_domain
from ..desktop.sound import SOUNDS, recording
from ..files import atomic_write

log = logging.getLogger(__name__)

__all__ = ["AskTeacher", "BlockPage", "HOST_NAME", "build_crx", "extension_id"]

EXTENSION = Path(__file__).resolve().parent / "extension"
PICTOGRAMS = Path(__file__).resolve().parent.parent / "desktop" / "assets" / "pictograms"
HOST_NAME = "uk.sch.classroom_safety.ask"
KEY_FILE = "blockpage-key.pem"
CRX_FILE = "classroom-safety-blockpage.crx"
UPDATES_FILE = "updates.xml"
HOST_SCRIPT = "ask-teacher"
SPOKEN = ("blocked", "asked_teacher")
MAX_ASKS = 5            # domains a device may ask about in ASK_WINDOW
ASK_WINDOW = 600.0
ASK_REPEAT = 60.0       # the same domain again within this long: already asked


class BlockPageError(RuntimeError):
    """The extension could not be built or installed; str() is one line."""


# --------------------------------------------------------------------------- the CRX


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def extension_id(public_der: bytes) -> str:
    """Chromium's id for an extension signed with *public_der*: the first 16 bytes of its
    SHA-256, written with the letters a-p."""
    return "".join("abcdefghijklmnop"[int(c, 16)] for c in hashlib.sha256(public_der).hexdigest()[:32])


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    binary = shutil.which("openssl")
    if binary is None:
        raise BlockPageError("openssl is not installed (apt install openssl): the block page cannot be signed")
    out = subprocess.run([binary, *args], input=data, capture_output=True, timeout=30)
    if out.returncode != 0:
        raise BlockPageError(f"openssl {args[0]} failed: {out.stderr.decode(errors='replace').strip()[:200]}")
    return out.stdout


def ensure_key(path: Path) -> bytes:
    """The device's signing key at *path* (made once, 0600); returns its public key (DER)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "PEM")
        atomic_write(path, pem, 0o600)
    return _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")


def extension_files() -> dict[str, bytes]:
    """Every file of the extension, by its path inside it (the pictures and recordings come
    from agent/desktop/assets, so there is one copy of each)."""
    files = {p.name: p.read_bytes() for p in sorted(EXTENSION.iterdir()) if p.is_file()}
    for name in ("blocked", "asked_teacher"):
        files[f"images/{name}.svg"] = (PICTOGRAMS / f"{name}.svg").read_bytes()
    for wav in sorted(SOUNDS.glob("*/*.wav")):
        if wav.stem in SPOKEN:
            files[f"sounds/{wav.parent.name}/{wav.name}"] = wav.read_bytes()
    files["sounds/chime.wav"] = (SOUNDS / "chime.wav").read_bytes()
    return files


def _zip(files: dict[str, bytes]) -> bytes:
    """A zip with fixed dates, so the same files always make the same archive (and CRX)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[name])
    return buf.getvalue()


def build_crx(files: dict[str, bytes], key_path: Path, public_der: bytes) -> bytes:
    """A CRX3 package of *files*, signed with the RSA key at *key_path* (SHA-256)."""
    archive = _zip(files)
    crx_id = hashlib.sha256(public_der).digest()[:16]
    signed_header = _field(1, crx_id)                          # SignedData.crx_id
    signed = b"CRX3 SignedData\x00" + len(signed_header).to_bytes(4, "little") + signed_header + archive
    with tempfile.NamedTemporaryFile() as data:
        data.write(signed)
        data.flush()
        signature = _openssl("dgst", "-sha256", "-sign", str(key_path), data.name)
    proof = _field(1, public_der) + _field(2, signature)      # AsymmetricKeyProof
    header = _field(2, proof) + _field(10000, signed_header)  # CrxFileHeader
    return b"Cr24" + (3).to_bytes(4, "little") + len(header).to_bytes(4, "little") + header + archive


def version() -> str:
    return json.loads((EXTENSION / "manifest.json").read_text())["version"]


# --------------------------------------------------------------------------- installing it


class BlockPage:
    """The extension on this device: ``prepare()`` builds and installs it (once per start;
    files are only rewritten when they change), ``policy(words, ...)`` is what the Chromium
    policy adds for it.  *protect*: the guard's, told about each file before it is written."""

    def __init__(self, state_dir: str | Path, blockpage_dir: str | Path, native_hosts_dir: str | Path | None,
                 control_socket: str, protect: Callable[[Path, bytes], None] | None = None):
        self.state_dir = Path(state_dir)
        self.dir = Path(blockpage_dir)
        self.native_hosts_dir = Path(native_hosts_dir) if native_hosts_dir else None
        self.control_socket = control_socket
        self.protect = protect
        self.id: str | None = None
        self.error: str | None = None

    @property
    def crx(self) -> Path:
        return self.dir / CRX_FILE

    @property
    def update_url(self) -> str:
        return (self.dir / UPDATES_FILE).as_uri()

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        try:
            if path.read_bytes() == data and stat.S_IMODE(path.stat().st_mode) == mode:
                return
        except OSError:
            pass
        if self.protect is not None:
            self.protect(path, data)
        atomic_write(path, data, mode)

    def prepare(self) -> bool:
        """Build the CRX, its update manifest and the native host; False (and ``error``) if not."""
        try:
            public = ensure_key(self.state_dir / KEY_FILE)
            self.id = extension_id(public)
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o755)  # the pupil's browser reads it
            self._write(self.crx, build_crx(extension_files(), self.state_dir / KEY_FILE, public), 0o644)
            updates = ("<?xml version='1.0' encoding='UTF-8'?>\n"
                       "<gupdate xmlns='http://www.google.com/update2/response' protocol='2.0'>\n"
                       f"  <app appid='{self.id}'><updatecheck codebase='{self.crx.as_uri()}' "
                       f"version='{version()}' /></app>\n</gupdate>\n")
            self._write(self.dir / UPDATES_FILE, updates.encode(), 0o644)
            self._install_host()
        except (OSError, BlockPageError, subprocess.SubprocessError) as exc:
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("block page: %s; blocked sites show the browser's own page", self.error)
            return False
        self.error = None
        log.info("block page: extension %s ready in %s", self.id, self.dir)
        return True

    def _install_host(self) -> None:
        """The native messaging host: a small script and the manifest naming only our extension."""
        # The browser runs the host as the pupil: it runs a copy beside the extension (which the
        # pupil's browser reads anyway), not the agent's own file, whose install the pupil may
        # not be able to read.
        host = self.dir / "ask_host.py"
        self._write(host, (Path(__file__).resolve().parent / "ask_host.py").read_bytes(), 0o644)
        script = (f"#!/bin/sh\n# classroom-safety: the block page's \"Ask my teacher\" (agent/filter/ask_host.py)\n"
                  f"exec /usr/bin/python3 -I {host} "
                  f"--socket '{self.control_socket}' \"$@\"\n")
        self._write(self.dir / HOST_SCRIPT, script.encode(), 0o755)
        if self.native_hosts_dir is None:
            return
        manifest = {"name": HOST_NAME, "description": "classroom-safety: Ask my teacher",
                    "path": str(self.dir / HOST_SCRIPT), "type": "stdio",
                    "allowed_origins": [f"chrome-extension://{self.id}/"]}
        self.native_hosts_dir.mkdir(parents=True, exist_ok=True)
        self._write(self.native_hosts_dir / f"{HOST_NAME}.json",
                    (json.dumps(manifest, indent=2) + "\n").encode(), 0o644)

    def policy(self, words: dict[str, str], language: str, *, volume: int, sound: bool) -> dict:
        """What the Chromium policy adds: force-install the extension, give it its words,
        and let it (and nothing else) reach its native host.  {} when there is no extension."""
        if self.id is None:
            return {}

        def spoken(key: str) -> str:
            if not sound:
                return ""
            path = recording(language, key, words.get(key, ""))
            return f"{path.parent.name}/{path.name}" if path.parent != SOUNDS else path.name

        return {
            "ExtensionSettings": {
                "*": {"installation_mode": "blocked"},
                self.id: {"installation_mode": "force_installed", "update_url": self.update_url},
            },
            "3rdparty": {"extensions": {self.id: {
                "language": language, "blocked": words.get("blocked", ""),
                "ask_teacher": words.get("ask_teacher", ""), "asked_teacher": words.get("asked_teacher", ""),
                "sound_blocked": spoken("blocked"), "sound_asked": spoken("asked_teacher"),
                "volume": volume if sound else 0, "can_ask": True,
            }}},
            "NativeMessagingUserLevelHosts": False,
            "NativeMessagingBlocklist": ["*"],
            "NativeMessagingAllowlist": [HOST_NAME],
        }

    def allow_url(self) -> list[str]:
        """The extension's own pages, for an allowlist that blocks everything else."""
        return [f"chrome-extension://{self.id}"] if self.id else []


# --------------------------------------------------------------------------- asking


class AskTeacher:
    """The ``ask`` control op: a pupil's "Ask my teacher" becomes an ``unblock_request``.

    *emit(domain)* sends the event (on the queue thread: the caller posts it); *clock*:
    monotonic seconds.  ``__call__(request)`` runs on the control socket's thread."""

    def __init__(self, emit: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.clock = clock
        self._asked: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, request: dict) -> dict:
        raw = request.get("domain")
        if not isinstance(raw, str):
            raise ValueError("domain: which site to ask about is required")
        domain = raw.strip().lower().rstrip(".")
        if domain.startswith("www."):
            domain = domain[4:]
        try:
            check_domain(domain)
        except ValueError as exc:
            raise ValueError(f"domain: {exc}") from None
        now = self.clock()
        with self._lock:
            for name, at in list(self._asked.items()):
                if now - at > ASK_WINDOW:
                    del self._asked[name]
            if domain in self._asked and now - self._asked[domain] < ASK_REPEAT:
                return {"asked": True, "again": True}  # the teacher has it already
            if len(self._asked) >= MAX_ASKS:
                raise ValueError("this computer has asked about enough sites for now; ask a grown-up")
            self._asked[domain] = now
        self.emit(domain)
        return {"asked": True}

