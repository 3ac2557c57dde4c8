#!/bin/sh
# classroom-safety: let the agent's own user draw the report and lock overlays on this
# desktop, so the pupil (the session's user) cannot close them.
#
# At login, as the session's user: from /etc/X11/Xsession.d (X11) and /etc/xdg/autostart
# (labwc and wayfire run XDG autostart entries).
#   X11:     xhost +SI:localuser:AGENT_USER
#   Wayland: an ACL on $XDG_RUNTIME_DIR (search only) and on the Wayland socket
#            (read/write); nothing else in the runtime dir becomes readable.
# The pupil can take those back (they are the pupil's to give), so on X11 the agent also
# gets a way in that is not theirs:
#
# --display-setup, as root, from LightDM's display-setup-script, with DISPLAY and
# XAUTHORITY naming the new X server and its cookie file: the server's cookie is copied
# to $CLASSROOM_XAUTH_DIR/Xauthority (default /run/classroom-safety), mode 0600, owned
# by AGENT_USER, and AGENT_USER is granted by xhost as well, before any session starts.
# No xhost or xauth run by the pupil can revoke a cookie the server was started with.
#
# Usage: session-grant.sh [--display-setup] [AGENT_USER]   (default classroom-agent)
set -u
if [ "${1:-}" = "--display-setup" ]; then
    agent_user=${2:-classroom-agent}
    dir=${CLASSROOM_XAUTH_DIR:-/run/classroom-safety}
    if [ -z "${DISPLAY:-}" ] || [ -z "${XAUTHORITY:-}" ]; then
        echo "session-grant: --display-setup needs DISPLAY and XAUTHORITY (LightDM sets them)" >&2
        exit 1
    fi
    status=0
    umask 077
    mkdir -p "$dir" && chmod 0755 "$dir" || exit 1
    tmp=$(mktemp "$dir/.Xauthority.XXXXXX") || exit 1
    # Every record of the server's file: the agent's Xlib picks the one for its display.
    if xauth -f "$XAUTHORITY" nlist | xauth -q -f "$tmp" nmerge - && chown "$agent_user" "$tmp" \
            && chmod 0600 "$tmp" && mv -f "$tmp" "$dir/Xauthority"; then
        :
    else
        echo "session-grant: could not give $agent_user the display's cookie" >&2
        rm -f "$tmp"
        status=1
    fi
    xhost "+SI:localuser:$agent_user" >/dev/null 2>&1 || status=1
    exit $status
fi
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
