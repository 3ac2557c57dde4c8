#!/bin/sh
# classroom-safety: let the agent's own user draw the report and lock overlays on this
# desktop session, so the pupil (the session's user) cannot close them.
#
# Run by the session at login, as the session's user: from /etc/X11/Xsession.d (X11)
# and /etc/xdg/autostart (labwc and wayfire run XDG autostart entries).
#   X11:     xhost +SI:localuser:AGENT_USER
#   Wayland: an ACL on $XDG_RUNTIME_DIR (search only) and on the Wayland socket
#            (read/write); nothing else in the runtime dir becomes readable.
# Usage: session-grant.sh [AGENT_USER]   (default classroom-agent)
set -u
agent_user=${1:-classroom-agent}
status=0
if [ -n "${DISPLAY:-}" ] && command -v xhost >/dev/null 2>&1; then
    xhost "+SI:localuser:$agent_user" >/dev/null 2>&1 || status=1
fi
if [ -n "${WAYLAND_DISPLAY:-}" ]; then
    case "$WAYLAND_DISPLAY" in
        /*) socket=$WAYLAND_DISPLAY ;;
        *) socket=${XDG_RUNTIME_DIR:-/run/user/$(id -u)}/$WAYLAND_DISPLAY ;;
    esac
    if ! command -v setfacl >/dev/null 2>&1; then
        echo "session-grant: setfacl is missing (apt install acl); the report overlay cannot reach $socket" >&2
        status=1
    elif ! setfacl -m "u:$agent_user:x" "$(dirname "$socket")" || ! setfacl -m "u:$agent_user:rw" "$socket"; then
        echo "session-grant: could not grant $agent_user access to $socket" >&2
        status=1
    fi
fi
exit $status
