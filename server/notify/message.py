"""What an escalation message says, for e-mail and each webhook format.

Only what an adult needs to go to the room: the school, the room, the seat (a place
label, e.g. "Table 1") and device, when it was pressed in the school's own time, what
state the report is in now and who is on their way, and links to the dashboard.  Never a
pupil's name or login, never evidence (no domains): the message leaves the school's
systems (a mail provider, Teams, Slack), and the DSL reads the rest on the dashboard.

``Notice`` is built when an attempt is made, from the incident as stored then, so a retry
that goes out late says truthfully that the report has been answered since.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

from ..localtime import local_long

REASONS = {
    "escalated": "Nobody has answered a report",
    "unwatched": "A report was made in a room nobody is watching",
    "offsite": "A report was made on a device away from school",
}


def compose_email(headline: str, lines: list[str], sender: str, recipient: str,
                  headers: dict[str, str] | None = None) -> EmailMessage:
    """THE e-mail every notice sends (escalations, high-risk attempts, guard events): the
    headline as the subject, the lines as a plain-text body, and the notice's own headers."""
    msg = EmailMessage()
    msg["Subject"] = f"[Classroom safety] {headline}"
    msg["From"] = sender
    msg["To"] = recipient
    msg["Message-ID"] = make_msgid(domain="classroom-safety")
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content("\n".join(lines) + "\n")
    return msg


@dataclass(frozen=True)
class Notice:
    reason: str            # escalated | unwatched | offsite
    alert_id: str
    state: str             # the transition this is about: escalated | raised
    school: str
    site: str
    room: str
    room_name: str
    device: str
    seat: str | None
    raised_at: str         # RFC 3339 UTC
    status_now: str        # the report's state now: raised | escalated | acknowledged | cleared
    by: str | None         # who acknowledged / cleared, if anyone
    tz: str
    dashboard_url: str | None

    # ------------------------------------------------------------------ words

    @property
    def where(self) -> str:
        room = self.room if self.room_name in ("", self.room) else f"{self.room_name} ({self.room})"
        return f"{room}, {self.seat}" if self.seat else room

    @property
    def headline(self) -> str:
        return f"{REASONS.get(self.reason, 'Report')}: {self.where}"

    @property
    def when(self) -> str:
        return local_long(self.raised_at, self.tz)

    @property
    def now_line(self) -> str:
        if self.status_now == "acknowledged":
            return f"Now: {self.by or 'a member of staff'} has said they are coming."
        if self.status_now == "cleared":
            return f"Now: cleared by {self.by or 'a member of staff'}."
        if self.reason == "offsite":
            return ("Now: the device is off the school network (at home or on a trip), so nobody in the room "
                    "will see it. Please follow the school's remote-learning procedure.")
        if self.reason == "unwatched":
            return "Now: no teacher client or dashboard is showing this room. Please send an adult to the room."
        return "Now: nobody has said they are coming. Please send an adult to the room."

    @property
    def links(self) -> list[tuple[str, str]]:
        if not self.dashboard_url:
            return []
        base = self.dashboard_url.rstrip("/")
        return [("Office board", f"{base}/office"), ("Incident record (DSL)", f"{base}/incidents/{self.alert_id}")]

    def lines(self) -> list[str]:
        out = [self.headline, "", f"School: {self.school}", f"Room: {self.where}", f"Device: {self.device}",
               f"Pressed: {self.when}", "", self.now_line]
        if self.links:
            out.append("")
            out.extend(f"{label}: {url}" for label, url in self.links)
        out += ["", "This message holds no pupil names or evidence; see the dashboard.",
                f"(report {self.alert_id}, {self.state})"]
        return out

    # ------------------------------------------------------------------ formats

    def email(self, sender: str, recipient: str) -> EmailMessage:
        # Mail clients thread the escalation under the raise of the same report.
        return compose_email(self.headline, self.lines(), sender, recipient,
                             {"X-Classroom-Alert": f"{self.alert_id} {self.state}"})

    def fields(self) -> dict:
        """The ``json`` format: the plain fields, with the time in UTC and in the school's zone."""
        return {"event": "classroom-safety.escalation", "reason": self.reason, "headline": self.headline,
                "alert_id": self.alert_id, "state": self.state, "status_now": self.status_now, "by": self.by,
                "school": self.school, "site": self.site, "room": self.room, "room_name": self.room_name,
                "device": self.device, "seat": self.seat, "raised_at": self.raised_at, "raised_local": self.when,
                "timezone": self.tz, "links": {label: url for label, url in self.links}}

    def slack(self) -> dict:
        """A Slack-style incoming webhook (Slack, Mattermost, Rocket.Chat, Google Chat): ``{"text"}``."""
        text = [f"*{self.headline}*", f"Pressed {self.when} at {self.school}.", self.now_line]
        text += [f"<{url}|{label}>" for label, url in self.links]
        return {"text": "\n".join(text)}

    def teams(self) -> dict:
        """A Microsoft Teams workflow (Power Automate "When a Teams webhook request is received"):
        a message with one Adaptive Card."""
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": [
                {"type": "TextBlock", "text": self.headline, "weight": "Bolder", "size": "Medium", "wrap": True,
                 "color": "Attention"},
                {"type": "FactSet", "facts": [
                    {"title": "School", "value": self.school},
                    {"title": "Room", "value": self.where},
                    {"title": "Device", "value": self.device},
                    {"title": "Pressed", "value": self.when},
                ]},
                {"type": "TextBlock", "text": self.now_line, "wrap": True},
            ],
            "actions": [{"type": "Action.OpenUrl", "title": label, "url": url} for label, url in self.links],
        }
        return {"type": "message", "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}

    def payload(self, fmt: str) -> dict:
        return {"teams": self.teams, "slack": self.slack}.get(fmt, self.fields)()
