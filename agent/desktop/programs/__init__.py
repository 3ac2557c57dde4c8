"""The desktop's child processes, each run as ``python -m agent.desktop.programs.NAME``.

* ``overlay_x11``     -- the Tk report/lock overlay on X11 (the agent's own user);
* ``overlay_wayland`` -- the GTK layer-shell overlay on Wayland, on Debian's /usr/bin/python3
  (the agent's own user);
* ``overlay_core``    -- what both overlays share: the JSON-lines conversation, the staff PIN, the pictograms;
* ``button_x11``, ``button_wayland`` -- the on-screen report button (the agent's own user);
* ``button_core``     -- what both buttons share: the conversation and press-and-hold;
* ``aup_windows``     -- the acceptable-use dialog and the monitoring notice (the session user);
* ``x11_idle``        -- XScreenSaver idle time through libXss, for X11 without xprintidle;
* ``x11_watch``       -- the X11 overlay's check on its own window (mapped, on top, full size), libX11.

They import only the standard library, gi/tkinter and ``agent.desktop.pin``: nothing
here may pull in the agent's virtualenv (psutil, paho, yaml, pydantic...).
"""
