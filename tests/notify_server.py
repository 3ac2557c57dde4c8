"""A stand-in desktop notification server for tests (run with the SYSTEM python3, which has gi).

Owns org.freedesktop.Notifications on the session bus (start it under ``dbus-run-session``),
runs the command given on its command line, then prints one JSON line:
``{"rc": <command exit code>, "notifications": [{"app", "icon", "summary", "body", "urgency"}]}``.
The command talks to it through the real ``notify-send`` and the real bus."""

import json
import subprocess
import sys
import threading

from gi.repository import Gio, GLib

XML = """<node><interface name="org.freedesktop.Notifications">
<method name="GetServerInformation"><arg direction="out" type="s"/><arg direction="out" type="s"/>
  <arg direction="out" type="s"/><arg direction="out" type="s"/></method>
<method name="GetCapabilities"><arg direction="out" type="as"/></method>
<method name="Notify"><arg type="s" direction="in"/><arg type="u" direction="in"/><arg type="s" direction="in"/>
  <arg type="s" direction="in"/><arg type="s" direction="in"/><arg type="as" direction="in"/>
  <arg type="a{sv}" direction="in"/><arg type="i" direction="in"/><arg type="u" direction="out"/></method>
<method name="CloseNotification"><arg type="u" direction="in"/></method>
</interface></node>"""

got = []
result = {}
loop = GLib.MainLoop()


def on_call(conn, sender, path, iface, method, params, invocation):
    if method == "GetServerInformation":
        invocation.return_value(GLib.Variant("(ssss)", ("test-notifyd", "classroom-safety", "1", "1.2")))
    elif method == "GetCapabilities":
        invocation.return_value(GLib.Variant("(as)", (["body"],)))
    elif method == "Notify":
        app, _rid, icon, summary, body, _actions, hints, _timeout = params.unpack()
        got.append({"app": app, "icon": icon, "summary": summary, "body": body, "urgency": hints.get("urgency")})
        invocation.return_value(GLib.Variant("(u)", (len(got),)))
    else:
        invocation.return_value(None)


def on_bus(conn, name):
    node = Gio.DBusNodeInfo.new_for_xml(XML)
    conn.register_object("/org/freedesktop/Notifications", node.interfaces[0], on_call, None, None)


def finish():
    print(json.dumps({"rc": result.get("rc"), "notifications": got}), flush=True)
    loop.quit()
    return False


def on_name(conn, name):
    def run():
        result["rc"] = subprocess.run(sys.argv[1:], timeout=30).returncode
        GLib.idle_add(finish)

    threading.Thread(target=run, daemon=True).start()


Gio.bus_own_name(Gio.BusType.SESSION, "org.freedesktop.Notifications", Gio.BusNameOwnerFlags.NONE,
                 on_bus, on_name, None)
GLib.timeout_add_seconds(40, finish)
loop.run()
