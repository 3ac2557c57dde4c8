#!/usr/bin/env bash
# install-agent.sh: set up a fresh Raspberry Pi OS (Bookworm/Trixie) or Debian device as a
# classroom-safety device, end to end.  Safe to run again: every step checks first and
# only changes what differs (re-run it to change a setting).  --dry-run prints what it
# would do and changes nothing.  Walkthrough: docs/deploy-pi.md.
#
#   sudo scripts/install-agent.sh --device 5b-pi-01 --site penny-acres \
#       --broker mqtts://classroom.penny-acres.sch.uk:8883 \
#       --collector https://classroom.penny-acres.sch.uk \
#       --token TOKEN [--ca-file ca.pem] [--session-user pupil] \
#       [--screen auto|wayland|swaylock|x11|headless] [--staff-pin-file FILE] [--dry-run]
#
# Steps: apt packages; the `classroom-agent` system user (gpio group) and the press-only
# `classroom-press` group (the agent and the desktop users: they may press the report
# button through the control socket and do nothing else there); the venv in
# /opt/classroom-safety; /etc/classroom-safety/agent.yaml (root:classroom-agent 0640),
# credentials.yaml (classroom-agent 0600: redeemed from the one-time --token with
# `classroom-agent enrol`, or copied from --credentials FILE) and staff-pin (classroom-agent
# 0600); browser policy folders; the display grants (the session's, and LightDM's
# display-setup hook); the systemd unit, enabled and started.  Secrets (the broker password,
# the token, the PIN hash) are never printed.
set -euo pipefail

PROG=install-agent.sh
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/.." && pwd)"
PREFIX=/opt/classroom-safety
VENV="$PREFIX/venv"
ETC=/etc/classroom-safety
STATE=/var/lib/classroom-agent
UNIT_DIR=/etc/systemd/system
SERVICE_USER=classroom-agent
ROOT=""
DRY=0
DO_PACKAGES=1
DO_SYSTEMD=1
PRESS_GROUP=classroom-press
DEVICE="" SITE="" BROKER="" COLLECTOR="" CREDENTIALS="" TOKEN="" CA_FILE="" SESSION_USER="" SCREEN=auto PIN_HASH="" PIN_FILE=""
CHANGED=0
LAST=0

PACKAGES=(python3 python3-venv python3-tk python3-lgpio dnsmasq-base nftables x11-xserver-utils xauth xprintidle
          swayidle swaylock python3-gi gir1.2-gtklayershell-0.1 acl)

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
say() { printf '%s\n' "$*"; }

usage() {
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --device ID            this device's id, as in its room file (required)
  --site ID              the school's site id (required)
  --broker URL           mqtts://host:8883 (required)
  --collector URL        https://host (required)
  --token TOKEN          a one-time enrolment token from `classroom-server enrol-token --device ID`:
                         redeemed at --collector for this device's own credentials (or --credentials)
  --credentials FILE     instead of --token: a credentials YAML (username/password) made for this device
  --ca-file FILE         CA certificate for the broker/collector, if not a public CA
  --session-user USER    the desktop account whose screen is locked/blanked (default: detected);
                         also put in the press group
  --screen BACKEND       auto, wayland, swaylock, x11 or headless (default auto)
  --staff-pin-file FILE  a file with the staff PIN's hash, from `classroom-agent hash-pin --out FILE`
  --staff-pin-hash HASH  the hash itself (it shows in `ps` while the script runs: prefer the file)
  --press-group NAME     the press-only group for the control socket (default classroom-press)
  --source DIR           the classroom-safety source to install (default: this checkout)
  --service-user NAME    the service account (default classroom-agent)
  --root DIR             install into DIR (an SD card image mounted there); implies
                         --no-packages and --no-systemd
  --no-packages          do not run apt-get
  --no-systemd           do not install or start the systemd unit
  --dry-run              print what would be done; change nothing
EOF
}

# ------------------------------------------------------------------ arguments
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) need_value "$@"; DEVICE=$2; shift 2 ;;
        --site) need_value "$@"; SITE=$2; shift 2 ;;
        --broker) need_value "$@"; BROKER=$2; shift 2 ;;
        --collector) need_value "$@"; COLLECTOR=$2; shift 2 ;;
        --credentials) need_value "$@"; CREDENTIALS=$2; shift 2 ;;
        --token) need_value "$@"; TOKEN=$2; shift 2 ;;
        --ca-file) need_value "$@"; CA_FILE=$2; shift 2 ;;
        --session-user) need_value "$@"; SESSION_USER=$2; shift 2 ;;
        --screen) need_value "$@"; SCREEN=$2; shift 2 ;;
        --staff-pin-hash) need_value "$@"; PIN_HASH=$2; shift 2 ;;
        --staff-pin-file) need_value "$@"; PIN_FILE=$2; shift 2 ;;
        --press-group) need_value "$@"; PRESS_GROUP=$2; shift 2 ;;
        --source) need_value "$@"; SOURCE=$2; shift 2 ;;
        --service-user) need_value "$@"; SERVICE_USER=$2; shift 2 ;;
        --root) need_value "$@"; ROOT=${2%/}; DO_PACKAGES=0; DO_SYSTEMD=0; shift 2 ;;
        --no-packages) DO_PACKAGES=0; shift ;;
        --no-systemd) DO_SYSTEMD=0; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

ID_RE='^[a-z0-9][a-z0-9-]{0,62}$'
[ -n "$DEVICE" ] || die "--device is required (see --help)"
[ -n "$SITE" ] || die "--site is required"
[ -n "$BROKER" ] || die "--broker is required"
[ -n "$COLLECTOR" ] || die "--collector is required"
[ -n "$CREDENTIALS" ] || [ -n "$TOKEN" ] || die "--token TOKEN (from \`classroom-server enrol-token\`) or --credentials FILE is required"
[ -z "$CREDENTIALS" ] || [ -z "$TOKEN" ] || die "give --token or --credentials, not both"
[ -z "$TOKEN" ] || [[ $TOKEN =~ ^[A-Za-z0-9_-]{16,200}$ ]] || die "--token: not a token from \`classroom-server enrol-token\`"
[[ $DEVICE =~ $ID_RE ]] || die "--device: '$DEVICE' is not a valid id (lowercase letters, digits and '-')"
[[ $SITE =~ $ID_RE ]] || die "--site: '$SITE' is not a valid id (lowercase letters, digits and '-')"
[[ $BROKER =~ ^mqtts?://[^/[:space:]]+$ ]] || die "--broker: '$BROKER' is not mqtts://host:port or mqtt://host:port"
[[ $COLLECTOR =~ ^https?://[^[:space:]]+$ ]] || die "--collector: '$COLLECTOR' is not an http(s) URL"
case "$SCREEN" in auto|wayland|swaylock|x11|headless) ;; *) die "--screen: '$SCREEN' is not auto, wayland, swaylock, x11 or headless" ;; esac
[ -z "$SESSION_USER" ] || [[ $SESSION_USER =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]] || die "--session-user: '$SESSION_USER' is not a user name"
if [ -n "$PIN_FILE" ]; then
    [ -z "$PIN_HASH" ] || die "--staff-pin-file and --staff-pin-hash: give one of them"
    [ -r "$PIN_FILE" ] || die "--staff-pin-file: cannot read '$PIN_FILE'"
    PIN_HASH="$(grep -v '^[[:space:]]*#' "$PIN_FILE" | tr -d '[:space:]')"
    PIN_OPT=--staff-pin-file
else
    PIN_OPT=--staff-pin-hash
fi
# scrypt$N$r$p$DIGITS$salt$hash, DIGITS 6-12 (agent/desktop/pin.py); never echo it back.
if [ -n "$PIN_HASH" ] && ! [[ $PIN_HASH =~ ^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$([0-9]+)\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$ ]]; then
    if [[ $PIN_HASH =~ ^scrypt\$[0-9]+\$[0-9]+\$[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$ ]]; then
        die "$PIN_OPT: made by an older hash-pin that allowed 4-digit PINs; make a new one of 6 or more digits"
    fi
    die "$PIN_OPT: not a hash from \`classroom-agent hash-pin\`"
fi
if [ -n "$PIN_HASH" ] && { [ "${BASH_REMATCH[1]}" -lt 6 ] || [ "${BASH_REMATCH[1]}" -gt 12 ]; }; then
    die "$PIN_OPT: the PIN has ${BASH_REMATCH[1]} digits; a staff PIN needs 6 to 12"
fi
[[ $PRESS_GROUP =~ ^[a-z_][a-z0-9_.-]{0,31}$ ]] || die "--press-group: '$PRESS_GROUP' is not a group name"
agent_group="$(id -gn "$SERVICE_USER" 2>/dev/null || echo "$SERVICE_USER")"
[ "$PRESS_GROUP" != "$agent_group" ] || die "--press-group: must not be the agent's own group ($agent_group), which can read its config"
if [ -n "$CREDENTIALS" ]; then
    [ -r "$CREDENTIALS" ] || die "--credentials: cannot read '$CREDENTIALS'"
    grep -Eq '^username:[[:space:]]*[^[:space:]]' "$CREDENTIALS" && grep -Eq '^password:[[:space:]]*[^[:space:]]' "$CREDENTIALS" \
        || die "--credentials: '$CREDENTIALS' has no username: and password: lines"
fi
[ -z "$CA_FILE" ] || grep -q 'BEGIN CERTIFICATE' "$CA_FILE" 2>/dev/null || die "--ca-file: '$CA_FILE' is not a PEM certificate"
[ -f "$SOURCE/pyproject.toml" ] && [ -d "$SOURCE/agent" ] || die "--source: '$SOURCE' is not a classroom-safety checkout"
if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then die "run as root (sudo), or add --dry-run"; fi

# ------------------------------------------------------------------ helpers
quote() { local out="" a; for a in "$@"; do out+="$(printf '%q' "$a") "; done; printf '%s' "${out% }"; }

# Run a command that changes the system (printed instead under --dry-run).
act() {
    if [ "$DRY" = 1 ]; then say "would run: $(quote "$@")"; else say "run: $(quote "$@")"; "$@"; fi
    CHANGED=1
}

# put MODE OWNER GROUP PATH [secret] < content: write only if content/mode/owner differ.
put() {
    local mode=$1 owner=$2 group=$3 path=$4 secret=${5:-} dest tmp
    dest="$ROOT$path"
    tmp="$(mktemp)"
    cat >"$tmp"
    LAST=0
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" \
        && [ "$(stat -c '%a %U %G' "$dest")" = "$mode $owner $group" ]; then
        say "unchanged: $path"
        rm -f "$tmp"
        return
    fi
    CHANGED=1
    LAST=1
    if [ "$DRY" = 1 ]; then
        say "would write: $path (mode $mode, $owner:$group)"
        if [ -n "$secret" ]; then
            say "    | (secret: contents not shown)"
        elif [ "$(wc -l <"$tmp")" -le 20 ]; then
            sed 's/^/    | /' "$tmp"
        else
            say "    | ($(wc -l <"$tmp") lines)"
        fi
        rm -f "$tmp"
        return
    fi
    install -D -m "$mode" -o "$owner" -g "$group" "$tmp" "$dest"
    rm -f "$tmp"
    say "wrote: $path"
}

# dir MODE OWNER GROUP PATH: create or fix a directory.
dir() {
    local mode=$1 owner=$2 group=$3 path=$4 dest
    dest="$ROOT$path"
    if [ -d "$dest" ] && [ "$(stat -c '%a %U %G' "$dest")" = "$mode $owner $group" ]; then
        say "unchanged: $path/"
        return
    fi
    if [ "$DRY" = 1 ]; then say "would create: $path/ (mode $mode, $owner:$group)"; CHANGED=1; return; fi
    install -d -m "$mode" -o "$owner" -g "$group" "$dest"
    CHANGED=1
    say "made: $path/"
}

# ------------------------------------------------------------------ 1. packages
step() { say ""; say "== $*"; }

step "packages"
if [ "$DO_PACKAGES" = 1 ]; then
    missing=()
    for pkg in "${PACKAGES[@]}"; do
        if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            continue
        fi
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            say "note: package $pkg is not available here (fine on a PC without GPIO or Wayland)"
            continue
        fi
        missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "unchanged: all packages installed"
    else
        act apt-get install -y --no-install-recommends "${missing[@]}"
    fi
else
    say "skipped (--no-packages)"
fi

# ------------------------------------------------------------------ 2. service user
step "service user $SERVICE_USER"
if [ -n "$ROOT" ]; then
    say "skipped (--root): create it on the device with: useradd --system --user-group --home-dir $STATE --shell /usr/sbin/nologin $SERVICE_USER"
    [ "$DRY" = 1 ] || id -u "$SERVICE_USER" >/dev/null 2>&1 || die "--root: user $SERVICE_USER must exist here to own the files (use --service-user)"
elif id -u "$SERVICE_USER" >/dev/null 2>&1; then
    say "unchanged: user $SERVICE_USER exists"
else
    act useradd --system --user-group --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
        --comment "classroom-safety agent" "$SERVICE_USER"
fi
SERVICE_GROUP="$(id -gn "$SERVICE_USER" 2>/dev/null || echo "$SERVICE_USER")"

# The press-only group: owns the control socket, nothing else.  The agent is in it (to
# give it the socket) and so are the desktop users (to press); nobody else's files are
# readable through it.
in_group() { id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; }
if [ -n "$ROOT" ]; then
    say "skipped (--root): on the device: groupadd --system $PRESS_GROUP; usermod -a -G $PRESS_GROUP $SERVICE_USER" \
        "(and each desktop user)"
else
    if getent group "$PRESS_GROUP" >/dev/null; then
        say "unchanged: group $PRESS_GROUP exists"
    else
        act groupadd --system "$PRESS_GROUP"
    fi
    for member in "$SERVICE_USER" $SESSION_USER; do
        if in_group "$member" "$PRESS_GROUP"; then
            say "unchanged: $member is in group $PRESS_GROUP"
        elif id -u "$member" >/dev/null 2>&1 || [ "$DRY" = 1 ]; then
            act usermod -a -G "$PRESS_GROUP" "$member"
        else
            say "note: user $member does not exist yet; add it later: usermod -a -G $PRESS_GROUP $member"
        fi
    done
    say "note: other desktop users can press through the control socket once in $PRESS_GROUP: usermod -a -G $PRESS_GROUP USER"
fi
if [ -z "$ROOT" ] && getent group gpio >/dev/null; then
    if id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx gpio; then
        say "unchanged: $SERVICE_USER is in group gpio"
    else
        # The report button and LED: /dev/gpiochip* belong to group gpio on Raspberry Pi OS.
        act usermod -a -G gpio "$SERVICE_USER"
    fi
else
    say "note: no gpio group here (not a Raspberry Pi); the report key still works"
fi

# ------------------------------------------------------------------ 3. the program
step "program in $VENV"
stamp_now="$(cd "$SOURCE" && find pyproject.toml agent server -type f \( -name '*.py' -o -name '*.toml' -o -name '*.yaml' -o -name '*.sql' -o -name '*.html' -o -name '*.css' -o -name '*.js' \) -print0 \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
stamp_file="$ROOT$VENV/.classroom-safety-source"
if [ -x "$ROOT$VENV/bin/python" ]; then
    say "unchanged: venv exists"
else
    # --system-site-packages: python3-lgpio and Tk come from apt, not from pip.
    act python3 -m venv --system-site-packages "$ROOT$VENV"
fi
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp_now" ]; then
    say "unchanged: classroom-safety ($stamp_now) already installed"
else
    act "$ROOT$VENV/bin/pip" install --quiet --upgrade "$SOURCE"
    if [ "$DRY" = 1 ]; then say "would write: $VENV/.classroom-safety-source"; else printf '%s\n' "$stamp_now" >"$stamp_file"; fi
fi
if [ -f "$SOURCE/docs/deploy-pi.md" ]; then
    put 644 root root "$PREFIX/docs/deploy-pi.md" <"$SOURCE/docs/deploy-pi.md"
fi

# ------------------------------------------------------------------ 4. configuration
step "configuration in $ETC"
dir 755 root root "$ETC"
yaml="# /etc/classroom-safety/agent.yaml: written by scripts/install-agent.sh.
# To change it, run the script again with new options (it only changes what differs).
device: $DEVICE
site: $SITE
broker_url: $BROKER
collector_url: $COLLECTOR
credentials: $ETC/credentials.yaml"
[ -z "$CA_FILE" ] || yaml+=$'\n'"ca_file: $ETC/ca.pem"
yaml+=$'\n'"state_dir: $STATE"
yaml+=$'\n'"control_socket: /run/classroom-agent/control.sock"
yaml+=$'\n'"control_group: $PRESS_GROUP"
yaml+=$'\n'"screen_backend: $SCREEN"
[ -z "$SESSION_USER" ] || yaml+=$'\n'"session_user: $SESSION_USER"
yaml+=$'\n'"staff_pin_file: $ETC/staff-pin"
if grep -q '^staff_pin_hash:' "$ROOT$ETC/agent.yaml" 2>/dev/null; then
    # The old place, which the agent's group can read; the hash (maybe of a 4-digit PIN) is dropped.
    say "note: $ETC/agent.yaml had a staff_pin_hash; the PIN hash now lives in $ETC/staff-pin only."
    [ -n "$PIN_HASH" ] || [ -f "$ROOT$ETC/staff-pin" ] || say "note: make a new PIN of 6 or more digits:" \
        "classroom-agent hash-pin --out pin.hash, then run this again with --staff-pin-file pin.hash"
fi
# (not `... | put`: a pipe would run put in a subshell and lose what it changed)
put 640 root "$SERVICE_GROUP" "$ETC/agent.yaml" <<<"$yaml"
# Only the agent reads the PIN hash: 0600, owned by the service user.
[ -z "$PIN_HASH" ] || put 600 "$SERVICE_USER" "$SERVICE_GROUP" "$ETC/staff-pin" secret <<<"$PIN_HASH"
[ -z "$CA_FILE" ] || put 644 root root "$ETC/ca.pem" <"$CA_FILE"
# Only the agent reads its password: 0600, owned by the service user.
if [ -n "$CREDENTIALS" ]; then
    put 600 "$SERVICE_USER" "$SERVICE_GROUP" "$ETC/credentials.yaml" secret <"$CREDENTIALS"
elif [ -f "$ROOT$ETC/credentials.yaml" ] && grep -Eq "^username:[[:space:]]*'?$DEVICE'?[[:space:]]*\$" "$ROOT$ETC/credentials.yaml" \
        && [ "$(stat -c '%a %U' "$ROOT$ETC/credentials.yaml")" = "600 $SERVICE_USER" ]; then
    # Enrolled already: a token works once, and the device has its password.
    say "unchanged: $ETC/credentials.yaml (enrolled as $DEVICE)"
else
    # The token goes on stdin, never on a command line (`ps` shows those to every user).
    enrol=("$ROOT$VENV/bin/classroom-agent" enrol --collector "$COLLECTOR" --token-file - --device "$DEVICE"
           --credentials "$ROOT$ETC/credentials.yaml" --owner "$SERVICE_USER")
    [ -z "$CA_FILE" ] || enrol+=(--ca-file "$ROOT$ETC/ca.pem")
    CHANGED=1
    if [ "$DRY" = 1 ]; then
        say "would run: $(quote "${enrol[@]}") (token on stdin, not shown)"
    else
        say "run: $(quote "${enrol[@]}") (token on stdin, not shown)"
        "${enrol[@]}" <<<"$TOKEN" || die "enrolment with --token failed (the line above says why); nothing else was changed after agent.yaml"
    fi
fi
if [ "$DRY" = 0 ] && [ -x "$ROOT$VENV/bin/classroom-agent" ]; then
    "$ROOT$VENV/bin/classroom-agent" check-config "$ROOT$ETC/agent.yaml" >/dev/null \
        || die "$ETC/agent.yaml does not pass classroom-agent check-config"
    say "checked: $ETC/agent.yaml"
fi

# ------------------------------------------------------------------ 5. folders the agent writes
step "folders the agent writes"
dir 750 "$SERVICE_USER" "$SERVICE_GROUP" "$STATE"
dir 755 "$SERVICE_USER" "$SERVICE_GROUP" /etc/chromium/policies/managed
dir 755 "$SERVICE_USER" "$SERVICE_GROUP" /etc/firefox/policies
# The block page's "Ask my teacher" host (agent/filter/blockpage.py registers it for Chromium).
dir 755 "$SERVICE_USER" "$SERVICE_GROUP" /etc/chromium/native-messaging-hosts

# ------------------------------------------------------------------ 6. the desktop
step "desktop"
# Let the agent's own user (not the pupil) draw the lock and report overlays, so the pupil
# cannot close them: xhost on X11, an ACL on the Wayland socket (scripts/session-grant.sh).
# X11 sessions run Xsession.d; labwc and wayfire run XDG autostart entries.  The pupil
# could revoke those, so LightDM also hands the agent the X server's own cookie when the
# display starts (display-setup-script, as root), which nothing the pupil runs can revoke.
put 755 root root /usr/local/libexec/classroom-safety-grant <"$SOURCE/scripts/session-grant.sh"
if [ -d "$ROOT/etc/lightdm" ]; then
    put 644 root root /etc/lightdm/lightdm.conf.d/90-classroom-safety.conf <<EOF
# classroom-safety: the X server's cookie for the agent ($SERVICE_USER), so the pupil cannot
# shut the report and lock overlays out of the display.  If another display-setup-script is
# needed, have it call this one too.
[Seat:*]
display-setup-script=/usr/local/libexec/classroom-safety-grant --display-setup $SERVICE_USER
EOF
else
    say "note: no LightDM here; on X11 the overlays rely on the session's xhost grant (docs/deploy-pi.md)"
fi
put 644 root root /etc/X11/Xsession.d/90classroom-safety <<EOF
# classroom-safety: the agent ($SERVICE_USER) may draw the lock and report overlays.
/usr/local/libexec/classroom-safety-grant $SERVICE_USER || true
EOF
put 644 root root /etc/xdg/autostart/classroom-safety-grant.desktop <<EOF
[Desktop Entry]
Type=Application
Name=classroom-safety display access
Comment=Lets the classroom-safety agent show the report and lock screens
Exec=/usr/local/libexec/classroom-safety-grant $SERVICE_USER
NoDisplay=true
X-GNOME-Autostart-Phase=Initialization
EOF

# ------------------------------------------------------------------ 7. systemd
step "systemd service"
sed "s/^User=classroom-agent$/User=$SERVICE_USER/; s/^Group=classroom-agent$/Group=$SERVICE_GROUP/" \
    "$SOURCE/systemd/classroom-agent.service" >"${TMPDIR:-/tmp}/classroom-agent.service.$$"
put 644 root root "$UNIT_DIR/classroom-agent.service" <"${TMPDIR:-/tmp}/classroom-agent.service.$$"
rm -f "${TMPDIR:-/tmp}/classroom-agent.service.$$"
if [ "$DO_SYSTEMD" = 1 ]; then
    if [ "$LAST" = 1 ]; then act systemctl daemon-reload; fi
    if systemctl is-enabled --quiet classroom-agent 2>/dev/null; then
        say "unchanged: classroom-agent enabled"
    else
        act systemctl enable classroom-agent
    fi
    if [ "$CHANGED" = 1 ]; then
        act systemctl restart classroom-agent
    elif systemctl is-active --quiet classroom-agent 2>/dev/null; then
        say "unchanged: classroom-agent running"
    else
        act systemctl start classroom-agent
    fi
else
    say "skipped (--no-systemd)"
fi

say ""
if [ "$DRY" = 1 ]; then
    say "dry run: nothing was changed"
elif [ "$CHANGED" = 1 ]; then
    say "done: $DEVICE is set up. Check it with: systemctl status classroom-agent; classroom-agent status"
else
    say "done: nothing needed changing"
fi
