// Teacher room view: live alerts over server-sent events, a beep, "I'm coming" and "Clear";
// the class controls ("Eyes on me", lock/unlock a device, allow a site, a message to every
// screen) and, per device, whether it obeyed the latest command or is not reachable.
// No framework and no external files: this page must work on any phone on the school Wi-Fi.
(function () {
  "use strict";
  var room = document.body.dataset.room;
  var list = document.getElementById("alerts");
  var empty = document.getElementById("no-alerts");
  var conn = document.getElementById("conn");
  var soundBtn = document.getElementById("sound-toggle");
  // The session's CSRF token (server/http/csrf.py): the API refuses a POST made with the
  // cookie without it.
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.content : "";
  var audio = null;
  var soundOn = false;

  // WebAudio needs a user gesture before it may play: the button both enables and tests it.
  function beep() {
    if (!soundOn || !audio) return;
    var t = audio.currentTime;
    [0, 0.35].forEach(function (offset) {
      var osc = audio.createOscillator();
      var gain = audio.createGain();
      osc.type = "sine";
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.0001, t + offset);
      gain.gain.exponentialRampToValueAtTime(0.4, t + offset + 0.02);
      gain.gain.exponentialRampToValueAtTime(0.0001, t + offset + 0.25);
      osc.connect(gain).connect(audio.destination);
      osc.start(t + offset);
      osc.stop(t + offset + 0.3);
    });
    // A visible count of beeps played: lets staff (and the browser test) see sound is working.
    document.body.dataset.beeps = String((+document.body.dataset.beeps || 0) + 1);
  }
  soundBtn.addEventListener("click", function () {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) { soundBtn.textContent = "No sound on this browser"; return; }
    if (!audio) audio = new Ctx();
    if (audio.state === "suspended") audio.resume();
    soundOn = !soundOn;
    soundBtn.textContent = soundOn ? "Sound is on" : "Turn sound on";
    if (soundOn) beep();
  });

  function label(state) {
    return {raised: "needs help", acknowledged: "someone is coming", escalated: "ESCALATED: needs help",
            cleared: "cleared"}[state] || state;
  }

  function render(a) {
    var li = document.getElementById("alert-" + a.id);
    if (a.state === "cleared") {
      if (li) li.remove();
      empty.hidden = list.children.length > 0;
      return;
    }
    if (!li) {
      li = document.createElement("li");
      li.id = "alert-" + a.id;
      li.dataset.alertId = a.id;
      var what = document.createElement("div");
      what.className = "alert-what";
      var dev = document.createElement("strong");
      dev.className = "alert-device";
      var st = document.createElement("span");
      st.className = "alert-state";
      var ts = document.createElement("span");
      ts.className = "muted alert-ts";
      what.append(dev, st, ts);
      var buttons = document.createElement("div");
      buttons.className = "alert-buttons";
      [["ack", "I'm coming"], ["clear", "Clear"]].forEach(function (b) {
        var btn = document.createElement("button");
        btn.type = "button";
        btn.className = "big " + b[0];
        btn.dataset.action = b[0];
        btn.textContent = b[1];
        buttons.append(btn);
      });
      li.append(what, buttons);
      list.prepend(li);
    }
    li.className = "alert state-" + a.state;
    li.querySelector(".alert-device").textContent = (a.seat || a.device) + (a.seat ? " (" + a.device + ")" : "");
    li.querySelector(".alert-state").textContent = label(a.state) + (a.by ? " · " + a.by : "");
    li.querySelector(".alert-ts").textContent = window.schoolTime(a.ts);
    li.querySelector("button.ack").disabled = !(a.state === "raised" || a.state === "escalated");
    empty.hidden = true;
  }

  list.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-action]");
    if (!btn) return;
    var li = btn.closest("li[data-alert-id]");
    var id = li.dataset.alertId;
    btn.disabled = true;
    fetch("/api/v1/alerts/" + encodeURIComponent(id) + "/" + btn.dataset.action, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: "{}"
    }).then(function (r) {
      if (!r.ok) throw new Error("HTTP " + r.status);
      li.classList.add("sent-" + btn.dataset.action);
      // Only if the device has not confirmed yet: its "acknowledged" can arrive over the
      // event stream before this reply, and must not be overwritten by our own guess.
      if (btn.dataset.action === "ack" && !li.classList.contains("state-acknowledged")) {
        li.querySelector(".alert-state").textContent = "on my way (sent)";
      }
    }).catch(function (e) {
      btn.disabled = false;
      li.querySelector(".alert-state").textContent = "could not send: " + e.message + "; try again";
    });
  });

  function setDevice(d) {
    var li = document.getElementById("device-" + d.device);
    if (!li) return;
    li.classList.remove("online", "offline", "unknown");
    li.classList.add(d.state);
    li.querySelector(".device-status").textContent = d.state;
    var dot = li.querySelector(".dot");
    if (dot) dot.className = "dot " + (d.state === "online" ? "on" : "off");
  }

  // ------------------------------------------------------------------ class controls
  // Every command goes through the API (server/http/api/commands.py), which sets who sent
  // it; each device answers with a cmd_result over the event stream.  No answer within
  // answerSeconds: "not reachable".
  var answerSeconds = +document.body.dataset.answerSeconds || 2;
  var status = document.getElementById("command-status");
  var errorBox = document.getElementById("command-error");
  var devices = document.getElementById("devices");
  var timers = {};
  var early = {};  // answers that overtook their command on the way here: {cmd_id: [answer]}
  var NAMES = {lock: "Lock", unlock: "Unlock", allow: "Allow a site", message: "Message"};
  var DONE = {lock: "✓ locked", unlock: "✓ unlocked", allow: "✓ site open", message: "✓ on screen"};

  function deviceItems() { return Array.prototype.slice.call(devices.querySelectorAll("li[data-device]")); }

  function answerLabel(cmd, result, error) {
    if (result === "done") return DONE[cmd] || "✓ done";
    if (result === "refused") return "refused: " + (error || "no reason given");
    if (result === "unsupported") return "this device cannot do that";
    if (result === "failed") return "failed: " + (error || "error");
    if (result === "unreachable") return "not reachable";
    return "sent…";
  }

  function showAnswer(li, result, error) {
    var cmd = status.dataset.cmd;
    li.dataset.result = result || "";
    li.dataset.error = error || "";
    var span = li.querySelector(".answer");
    span.className = "answer answer-" + (result || "waiting");
    span.textContent = answerLabel(cmd, result, error);
    summarise();
  }

  // The latest command's line: what, by whom, and how many devices obeyed.
  function summarise() {
    var id = status.dataset.cmdId;
    if (!id) return;
    var counts = {done: 0, unreachable: 0, waiting: 0, other: 0};
    deviceItems().forEach(function (li) {
      if (li.dataset.cmdId !== id) return;
      var r = li.dataset.result;
      counts[r === "done" || r === "unreachable" ? r : (r ? "other" : "waiting")] += 1;
    });
    var parts = [counts.done + " obeyed"];
    if (counts.waiting) parts.push(counts.waiting + " waiting");
    if (counts.unreachable) parts.push(counts.unreachable + " not reachable");
    if (counts.other) parts.push(counts.other + " refused or could not");
    status.textContent = (NAMES[status.dataset.cmd] || status.dataset.cmd) + " by " + status.dataset.by + ": " +
      parts.join(", ");
    status.hidden = false;
  }

  function noAnswerIn(li, id, ms) {
    clearTimeout(timers[li.dataset.device]);
    timers[li.dataset.device] = setTimeout(function () {
      if (li.dataset.cmdId === id && !li.dataset.result) showAnswer(li, "unreachable");
    }, Math.max(0, ms));
  }

  // A command sent (by this page, or by another page of the same room over the stream).
  function track(command) {
    if (status.dataset.cmdId === command.id) {
      // Our own reply after the stream's announcement: only what could not be sent is news.
      command.devices.forEach(function (d) {
        var li = document.getElementById("device-" + d.device);
        if (li && !d.sent && li.dataset.cmdId === command.id && !li.dataset.result) showAnswer(li, "unreachable");
      });
      return;
    }
    status.dataset.cmdId = command.id;
    status.dataset.cmd = command.cmd;
    status.dataset.by = command.by;
    command.devices.forEach(function (d) {
      var li = document.getElementById("device-" + d.device);
      if (!li) return;
      li.dataset.cmdId = command.id;
      if (!d.sent) { showAnswer(li, "unreachable"); return; }
      showAnswer(li, "");
      noAnswerIn(li, command.id, answerSeconds * 1000);
    });
    var overtaken = early[command.id] || [];
    early = {};  // answers to older commands are of no use any more
    overtaken.forEach(answered);
    summarise();
  }

  function answered(r) {
    var li = document.getElementById("device-" + r.device);
    if (!li) return;
    if (li.dataset.cmdId !== r.cmd_id) {
      // An answer to an older command, or to one this page has not heard of yet.
      if (status.dataset.cmdId !== r.cmd_id) (early[r.cmd_id] = early[r.cmd_id] || []).push(r);
      return;
    }
    clearTimeout(timers[r.device]);
    showAnswer(li, r.result, r.error);
  }

  function showLock(l) {
    var li = document.getElementById("device-" + l.device);
    if (!li) return;
    li.classList.toggle("locked", !!l.locked);
    li.querySelector(".lock-state").textContent = l.locked ?
      "Locked (" + l.reason + (l.by ? ", " + l.by : "") + ")" + (l.until ? " until " + window.schoolTime(l.until) : "") :
      "Unlocked";
  }

  function send(what, body, button) {
    errorBox.hidden = true;
    if (button) button.disabled = true;
    return fetch("/api/v1/rooms/" + encodeURIComponent(room) + "/" + what, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) {
          var detail = data.detail;
          if (Array.isArray(detail)) detail = detail.map(function (d) { return (d.loc || []).slice(-1)[0] + ": " + d.msg; }).join("; ");
          throw new Error(detail || ("HTTP " + r.status));
        }
        track(data);
        return data;
      });
    }).catch(function (e) {
      errorBox.textContent = "Not sent: " + e.message;
      errorBox.hidden = false;
    }).finally(function () { if (button) button.disabled = false; });
  }

  document.getElementById("eyes-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var form = ev.target;
    send("lock", {minutes: +form.querySelector("input[name=minutes]:checked").value, message: form.message.value},
         document.getElementById("eyes-on-me"));
  });
  document.getElementById("eyes-end").addEventListener("click", function (ev) {
    send("unlock", {}, ev.target);
  });
  document.getElementById("allow-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var form = ev.target;
    var body = {domain: form.domain.value.trim(), reason: form.reason.value.trim()};
    if (form.minutes.value) body.minutes = +form.minutes.value;
    send("allow", body, document.getElementById("allow-submit")).then(function (data) {
      if (data) form.domain.value = "";
    });
  });
  document.getElementById("message-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var form = ev.target;
    send("message", {text: form.text.value}, document.getElementById("message-send")).then(function (data) {
      if (data) form.text.value = "";
    });
  });
  devices.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button[data-device-action]");
    if (!btn) return;
    send(btn.dataset.deviceAction, {devices: [btn.closest("li[data-device]").dataset.device]}, btn);
  });

  // Where the page starts: the room's latest command, as the server knows it.
  deviceItems().forEach(function (li) {
    if (li.dataset.cmdId !== status.dataset.cmdId || !li.dataset.cmdId) return;
    if (li.dataset.result) { showAnswer(li, li.dataset.result, li.dataset.error); return; }
    var waited = Date.now() - Date.parse(li.dataset.sentAt);
    if (waited >= answerSeconds * 1000) showAnswer(li, "unreachable");
    else { showAnswer(li, ""); noAnswerIn(li, li.dataset.cmdId, answerSeconds * 1000 - waited); }
  });

  var source = new EventSource("/rooms/" + encodeURIComponent(room) + "/events");
  // The server ends each stream every ~20 s and the browser reconnects at once: only
  // say "reconnecting" if that takes more than a moment.
  var lost = null;
  source.addEventListener("open", function () {
    clearTimeout(lost);
    lost = null;
    conn.textContent = "live";
    conn.className = "dot on";
  });
  source.addEventListener("error", function () {
    if (lost) return;
    lost = setTimeout(function () { conn.textContent = "reconnecting…"; conn.className = "dot off"; }, 3000);
  });
  source.addEventListener("alert", function (ev) {
    var a = JSON.parse(ev.data);
    render(a);
    if (a.state === "raised" || a.state === "escalated") beep();
  });
  source.addEventListener("status", function (ev) { setDevice(JSON.parse(ev.data)); });
  source.addEventListener("command", function (ev) { track(JSON.parse(ev.data)); });
  source.addEventListener("cmd_result", function (ev) { answered(JSON.parse(ev.data)); });
  source.addEventListener("lock", function (ev) { showLock(JSON.parse(ev.data)); });
  // Sent on every (re)connect after the open alerts: drop any that were cleared meanwhile.
  source.addEventListener("snapshot", function (ev) {
    var open = JSON.parse(ev.data).open;
    Array.prototype.slice.call(list.children).forEach(function (li) {
      if (open.indexOf(li.dataset.alertId) < 0) li.remove();
    });
    empty.hidden = list.children.length > 0;
  });
})();
