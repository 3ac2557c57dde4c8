"""Browser-level allowlist: Chromium managed policy and Firefox ESR policies.json.

DNS decides which names resolve (``allow_domains``: sites and the CDNs they load from);
the browser decides which pages may be opened: ``allow_urls`` (paths included, e.g. only
/bitesize on bbc.co.uk) plus any domain a teacher opened.  It also adds what DNS cannot:
no incognito / guest / extra profiles / developer tools, no DNS over
HTTPS, safe search and YouTube restrict inside the browser, downloads blocked.

Files are written atomically: the temp file is created OUTSIDE the set of files Chromium
reads (it reads every file in its managed directory, whatever the name, and would see a
half-written or temporary file) and then moved in with ``os.replace``.  Only the agent's own file is
touched: ``classroom-safety.json`` for Chromium; for Firefox, which reads exactly one
``policies.json``, the agent replaces only the keys it owns and keeps any others.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from ..files import atomic_write

CHROMIUM_FILE = "classroom-safety.json"
FIREFOX_FILE = "policies.json"
YOUTUBE_RESTRICT = {"off": 0, "moderate": 1, "strict": 2}


def _domains(policy, overrides: Iterable[str]) -> list[str]:
    """Whole domains the browser may open: teacher overrides, plus the profile's domains
    when it lists no ``allow_urls`` at all (so a domain-only profile is not over-blocked)."""
    base = set() if policy.allow_urls else set(policy.allow_domains)
    return sorted(base | set(overrides))


def _upstream(policy) -> bool:
    return getattr(policy, "mode", "allowlist") == "upstream"


def _blocked(policy, overrides: Iterable[str]) -> list[str]:
    """In mode upstream: the key stage's block_domains, less any a teacher opened."""
    opened = set(overrides)
    return sorted(d for d in getattr(policy, "block_domains", ()) if d not in opened)


def chromium_policy(policy, overrides: Iterable[str] = (), *, block_quic: bool = True,
                    proxy: str | None = None, extension: dict | None = None,
                    extension_urls: Iterable[str] = ()) -> dict:
    """Chromium/Chrome managed policy (policy names from chromeenterprise.google/policies).

    *extension*: the block page's part (agent/filter/blockpage.py: force-install, its
    words, its native host); *extension_urls*: its pages, which the allowlist must let
    through.  Mode ``upstream`` (older pupils): the school's filter decides, so only the
    key stage's ``block_domains`` are blocked here."""
    if _upstream(policy):
        block = _blocked(policy, overrides)
        allow = list(extension_urls)
    else:
        # Everything is blocked except the allowlist; a bare domain pattern covers its subdomains.
        block = ["*"]
        allow = list(dict.fromkeys([*policy.allow_urls, *_domains(policy, overrides), *extension_urls]))
    # A proxy of the pupil's choosing would carry every page past the DNS allowlist.
    proxy_policy = {"ProxyMode": "fixed_servers", "ProxyServer": proxy} if proxy else {"ProxyMode": "direct"}
    return {
        "URLBlocklist": block,
        "URLAllowlist": allow,
        "IncognitoModeAvailability": 1,           # disabled
        "BrowserGuestModeEnabled": False,
        "BrowserAddPersonEnabled": False,
        "DeveloperToolsAvailability": 2,          # disallowed everywhere
        "DnsOverHttpsMode": "off",                # DNS must go through the device's dnsmasq
        "ForceGoogleSafeSearch": bool(policy.safe_search),
        "ForceYouTubeRestrict": YOUTUBE_RESTRICT.get(policy.youtube_restrict, 2),
        "DownloadRestrictions": 3,                # block all downloads
        "ExtensionInstallBlocklist": ["*"],       # no proxy / VPN extensions
        "BrowserSignin": 0,
        "SyncDisabled": True,
        "QuicAllowed": not block_quic,
        "RemoteDebuggingAllowed": False,          # --remote-debugging-port would drive pages around policy
        **proxy_policy,
        **(extension or {}),
    }


def _firefox_patterns(policy, overrides: Iterable[str]) -> list[str]:
    out: list[str] = []
    for d in _domains(policy, overrides):
        out += [f"*://{d}/*", f"*://*.{d}/*"]
    for url in policy.allow_urls:
        text = url if "://" in url else "https://" + url
        parts = urlsplit(text)
        path = parts.path.rstrip("/")
        out.append(f"{parts.scheme}://{parts.netloc}{path}/*")
        if path:
            out.append(f"{parts.scheme}://{parts.netloc}{path}")
    return list(dict.fromkeys(out))


def firefox_policy(policy, overrides: Iterable[str] = (), *, proxy: str | None = None) -> dict:
    """The keys the agent owns inside Firefox's ``{"policies": {...}}`` (names from
    mozilla.github.io/policy-templates).  Firefox reads /etc/firefox/policies/policies.json,
    Debian's firefox-esr included."""
    proxy_policy = ({"Mode": "manual", "HTTPProxy": proxy, "UseHTTPProxyForAllProtocols": True, "Locked": True}
                    if proxy else {"Mode": "none", "Locked": True})
    if _upstream(policy):
        website_filter = {"Block": [p for d in _blocked(policy, overrides) for p in (f"*://{d}/*", f"*://*.{d}/*")],
                          "Exceptions": []}
    else:
        website_filter = {"Block": ["<all_urls>"], "Exceptions": _firefox_patterns(policy, overrides)}
    return {
        "WebsiteFilter": website_filter,
        "DNSOverHTTPS": {"Enabled": False, "Locked": True},
        "DisablePrivateBrowsing": True,
        "DisableDeveloperTools": True,
        "ExtensionSettings": {"*": {"installation_mode": "blocked"}},
        "DisableFirefoxAccounts": True,
        "BlockAboutConfig": True,                 # about:config could switch DoH back on
        "BlockAboutProfiles": True,               # a fresh profile would start without our prefs
        "Proxy": proxy_policy,
    }


TMP_SUBDIR = ".classroom-safety-tmp"


def write_outside(target: Path, text: str, before_write=None) -> bool:
    """Atomically replace *target* from a temp file Chromium never reads, then os.replace.

    The temp file goes in the PARENT of the policy directory.  Where that is not writable
    or is another mount (the systemd unit makes only the policy directory itself
    writable), it goes in a private subdirectory instead: Chromium's ConfigDirPolicyLoader
    reads the directory's files non-recursively, so a subdirectory is as unseen as the
    parent, and it is on the same mount, so the rename stays atomic.

    Returns False (and writes nothing) if the content is already current."""
    target = Path(target)
    try:
        if target.read_text() == text:
            return False
    except OSError:
        pass
    if before_write is not None:
        # The guard must know the new content before the watcher sees the change,
        # or it would "restore" the old policy over ours.
        before_write(target, text.encode("utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    last: OSError | None = None
    for tmp_dir in (target.parent.parent, target.parent / TMP_SUBDIR):
        try:
            tmp_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            last = exc
            continue
        try:
            atomic_write(target, text, 0o644, tmp_dir=tmp_dir)
            return True
        except OSError as exc:
            # Another mount (EXDEV) or a parent the unit does not let us write: next place.
            if exc.errno not in (errno.EXDEV, errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            last = exc
    raise last  # type: ignore[misc]


def write_chromium(directory: str | Path, data: dict, before_write=None) -> bool:
    return write_outside(Path(directory) / CHROMIUM_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n",
                         before_write)


def write_firefox(directory: str | Path, ours: dict, before_write=None) -> bool:
    """Merge our keys into policies.json, keeping any policies someone else set."""
    path = Path(directory) / FIREFOX_FILE
    try:
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict) or not isinstance(existing.get("policies"), dict):
            existing = {"policies": {}}
    except (OSError, ValueError):
        existing = {"policies": {}}
    existing["policies"].update(ours)
    return write_outside(path, json.dumps(existing, indent=2, sort_keys=True) + "\n", before_write)
