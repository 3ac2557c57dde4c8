// Teacher room view: live alerts over server-sent events, a beep, "I'm coming" and "Clear".
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
    li.className = "device " + d.state;
    var dot = li.querySelector(".dot");
    if (dot) dot.className = "dot " + (d.state === "online" ? "on" : "off");
  }

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
  // Sent on every (re)connect after the open alerts: drop any that were cleared meanwhile.
  source.addEventListener("snapshot", function (ev) {
    var open = JSON.parse(ev.data).open;
    Array.prototype.slice.call(list.children).forEach(function (li) {
      if (open.indexOf(li.dataset.alertId) < 0) li.remove();
    });
    empty.hidden = list.children.length > 0;
  });
})();
