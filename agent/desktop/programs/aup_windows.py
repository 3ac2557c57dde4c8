"""The acceptable-use dialog and the monitoring notice: tiny Tk programs.

``python -m agent.desktop.programs.aup_windows dialog|notice|message`` with the text on stdin,
run as the desktop user by agent/desktop/x11.py's ``TkPresenter`` (agent/policy/aup.py
decides when).  The dialog prints only the word ``accepted`` when the pupil agrees;
closing it is not agreeing.  The notice has no title bar and no close button: it stays
for the whole session.  The message is a teacher's one line to the room (agent/policy/
teacher_message.py), a banner across the top of the screen until the agent ends it.
Standard library only.
"""

from __future__ import annotations

import os
import sys

# The rules' pictogram (agent/desktop/assets/pictograms), found from here: standard library only.
PICTURE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pictograms",
                       "acceptable_use.png")


def _dialog(text: str) -> int:  # pragma: no cover - exercised under Xvfb by hand
    import tkinter as tk

    root = tk.Tk()
    root.title("Our computer rules")
    root.attributes("-topmost", True)
    root.protocol("WM_DELETE_WINDOW", lambda: None)  # closing it is not agreeing
    try:
        picture = tk.PhotoImage(file=PICTURE).subsample(2)
        tk.Label(root, image=picture).pack(pady=(16, 0))
        root.picture = picture  # keep a reference: Tk drops an image nobody holds
    except tk.TclError:
        pass
    tk.Label(root, text="Our computer rules", font=("sans", 22, "bold")).pack(padx=24, pady=(20, 8))
    tk.Label(root, text=text, font=("sans", 16), justify="left", wraplength=700).pack(padx=24, pady=8)

    def agree():
        print("accepted", flush=True)
        root.destroy()

    button = tk.Button(root, text="I agree", font=("sans", 20, "bold"), command=agree)
    button.pack(pady=(8, 24), ipadx=20, ipady=8)
    button.focus_set()
    button.bind("<Return>", lambda _e: agree())  # keyboard-only devices and switch access
    root.mainloop()
    return 0


def _notice(text: str) -> int:  # pragma: no cover
    import tkinter as tk

    root = tk.Tk()
    root.overrideredirect(True)  # no title bar, no close button: it is a notice, not a window
    root.attributes("-topmost", True)
    label = tk.Label(root, text=text, font=("sans", 9), wraplength=360, justify="left", bg="#ffffe0", padx=6, pady=3)
    label.pack()
    root.update_idletasks()
    root.geometry(f"+{root.winfo_screenwidth() - root.winfo_reqwidth() - 8}+"
                  f"{root.winfo_screenheight() - root.winfo_reqheight() - 40}")
    root.mainloop()
    return 0


def _message(text: str) -> int:  # pragma: no cover
    import tkinter as tk

    root = tk.Tk()
    root.overrideredirect(True)  # a banner: no title bar, no close button; the agent ends it
    root.attributes("-topmost", True)
    width = root.winfo_screenwidth()
    tk.Label(root, text=" ".join(text.split()), font=("sans", 24, "bold"), wraplength=width - 48,
             bg="#1d4ed8", fg="white", padx=24, pady=14).pack(fill="x")
    root.update_idletasks()
    root.geometry(f"{width}x{root.winfo_reqheight()}+0+0")
    root.mainloop()
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    body = sys.stdin.read()
    sys.exit({"dialog": _dialog, "notice": _notice, "message": _message}.get(kind, lambda _t: 2)(body))
