// Office board: every room's open alerts and live receivers, kept live over server-sent
// events (server/web/pages/office.py).  No framework, no external files.
(function () {
  "use strict";
  var board = document.getElementById("board");
  var conn = document.getElementById("conn");
  var hours = document.getElementById("hours");
  var noRooms = document.getElementById("no-rooms");
  // Ages are counted against the server's clock, not this computer's.
  var skew = Date.parse(document.body.dataset.now) - Date.now() || 0;

  function label(state) {
    return {raised: "needs help", acknowledged: "someone is coming", escalated: "ESCALATED: nobody answered",
            cleared: "cleared"}[state] || state;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function age(ts) {
    var s = Math.max(0, Math.floor((Date.now() + skew - Date.parse(ts)) / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(m / 60) + " h " + String(m % 60).padStart(2, "0") + " min";
  }

  function roomCard(room) {
    var card = document.getElementById("room-" + room.room);
    if (!card) {
      card = el("section", "room-card");
      card.id = "room-" + room.room;
      card.dataset.room = room.room;
      var h = el("h2", null, (room.name || room.room) + " ");
      h.append(el("span", "muted", "(" + room.room + ")"));
      card.append(h, el("p", "receivers"), el("ul", "alerts"));
      board.append(card);
    }
    return card;
  }

  function setReceivers(room) {
    var card = roomCard(room);
    var p = card.querySelector(".receivers");
    p.textContent = "";
    if (room.receivers && room.receivers.length) {
      p.textContent = "Watching: " + room.receivers.map(function (r) {
        return r.who + " (" + (r.kind === "dashboard" ? "dashboard" : (r.client || "alerts client")) + ")";
      }).join(", ");
    } else {
      p.append(el("strong", "nobody", "No live receiver"));
    }
    card.dataset.watched = room.watched ? "true" : "false";
    card.classList.toggle("unwatched", !room.watched);
  }

  function setAlert(a) {
    var card = roomCard({room: a.room, name: a.room});
    var list = card.querySelector(".alerts");
    var li = document.getElementById("office-alert-" + a.id);
    if (a.state === "cleared") {
      if (li) li.remove();
      card.classList.toggle("has-alerts", list.children.length > 0);
      return;
    }
    if (!li) {
      li = el("li");
      li.id = "office-alert-" + a.id;
      var when = el("span", "muted", "pressed ");
      when.append(el("span", "alert-ts"), ", ", el("span", "age"), " ago");
      li.append(el("strong", "alert-device"), " ", el("span", "alert-state"), " ", el("span", "coming"), " ", when);
      list.prepend(li);
    }
    // Keep the first press time we heard of: later transitions carry their own ts.
    if (!li.dataset.ts || a.state === "raised") li.dataset.ts = a.ts;
    li.className = "alert state-" + a.state;
    li.querySelector(".alert-device").textContent = a.seat ? a.seat + " (" + a.device + ")" : a.device;
    li.querySelector(".alert-state").textContent = label(a.state);
    if (a.state === "acknowledged") li.querySelector(".coming").textContent = a.by ? a.by + " is coming" : "";
    li.querySelector(".alert-ts").textContent = window.schoolTime(li.dataset.ts);
    li.querySelector(".age").textContent = age(li.dataset.ts);
    card.classList.add("has-alerts");
  }

  function setBoard(state) {
    skew = Date.parse(state.now) - Date.now() || 0;
    hours.textContent = state.in_school_hours
      ? "School hours: a press in a room nobody is watching is e-mailed to the office and the DSL at once."
      : "Outside school hours.";
    var keep = {};
    state.rooms.forEach(function (room) {
      keep["room-" + room.room] = true;
      setReceivers(room);
      var card = roomCard(room);
      var open = {};
      room.alerts.forEach(function (a) { open["office-alert-" + a.id] = true; });
      Array.prototype.slice.call(card.querySelectorAll(".alerts li")).forEach(function (li) {
        if (!open[li.id]) li.remove();
      });
      room.alerts.slice().reverse().forEach(function (a) {
        var li = document.getElementById("office-alert-" + a.id);
        if (li) li.dataset.ts = a.ts;
        setAlert(a);
      });
      card.classList.toggle("has-alerts", room.alerts.length > 0);
    });
    Array.prototype.slice.call(board.children).forEach(function (card) {
      if (!keep[card.id]) card.remove();
    });
    noRooms.hidden = state.rooms.length > 0;
  }

  setInterval(function () {
    Array.prototype.slice.call(board.querySelectorAll(".alerts li")).forEach(function (li) {
      li.querySelector(".age").textContent = age(li.dataset.ts);
    });
  }, 1000);

  var source = new EventSource("/office/events");
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
  source.addEventListener("board", function (ev) { setBoard(JSON.parse(ev.data)); });
  source.addEventListener("alert", function (ev) { setAlert(JSON.parse(ev.data)); });
  source.addEventListener("room", function (ev) { setReceivers(JSON.parse(ev.data)); });
})();
