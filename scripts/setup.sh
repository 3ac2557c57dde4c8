#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 / Raspberry Pi OS machine.
#  1. system packages (skipped when every needed command is already present)
#  2. .venv with the project installed editable, plus server and test extras
#     (skipped when .venv/.installed-<sha256 of pyproject.toml> exists)
# It never enables or starts mosquitto / dnsmasq / postgresql services: the
# agent, server and tests run their own instances on their own ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

say() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(
  python3 python3-venv python3-pip
  mosquitto mosquitto-clients
  dnsmasq-base dnsutils nftables dnsperf
  postgresql iproute2
  xvfb xdotool x11-utils libnotify-bin
  chromium chromium-driver firefox-esr
  python3-tk python3-gi dbus fonts-dejavu-core
  sway swayidle swaylock openssl systemd
  gir1.2-gtklayershell-0.1 wtype acl
  alsa-utils wayvnc openssh-client
)
NEEDED_COMMANDS=(
  python3 mosquitto mosquitto_sub mosquitto_pub dnsmasq dig nft dnsperf ip
  chromium chromedriver firefox-esr Xvfb xdotool xdpyinfo notify-send
  sway swayidle swaylock openssl systemd-analyze dbus-run-session
  wtype setfacl getfacl
  aplay wayvnc ssh-agent
)

# Run as root directly, otherwise through sudo if it exists.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    say "need root (or sudo) to run: $*" >&2
    return 1
  fi
}

have_initdb() {
  command -v initdb >/dev/null 2>&1 && return 0
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
for c in "${NEEDED_COMMANDS[@]}"; do
  command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
have_initdb || missing+=("initdb")
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=("python3-venv")
python3 -c 'import tkinter' >/dev/null 2>&1 || missing+=("python3-tk")
# PDF exports set their text in DejaVu Sans (server/pdf.py).
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=("fonts-dejavu-core")
# The notification test's stand-in D-Bus server runs on Debian's own python3.
/usr/bin/python3 -c 'from gi.repository import Gio' >/dev/null 2>&1 || missing+=("python3-gi")
# The Wayland report overlay runs on Debian's python3 with gtk-layer-shell.
compgen -G '/usr/lib/*/girepository-1.0/GtkLayerShell-0.1.typelib' >/dev/null || missing+=("gir1.2-gtklayershell-0.1")

if [ "${#missing[@]}" -eq 0 ]; then
  say "system packages: all present, skipping apt"
else
  say "system packages: missing ${missing[*]}; installing with apt"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${APT_PACKAGES[@]}"
fi

# Python environment.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi

stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -e "$stamp" ]; then
  say "python packages: up to date ($(basename "$stamp" | cut -c1-22)...)"
else
  say "python packages: installing classroom-safety[server,test] into .venv"
  .venv/bin/python -m pip install --quiet -e '.[server,test]'
  rm -f .venv/.installed-*
  touch "$stamp"
fi
say "done"
