// The room page's "Asked to open" list (templates/unblock_requests.html): pupils' "Ask my
// teacher" requests from the block page, each with "Allow for this lesson" and "Not now".
// Fetched now and every few seconds (a request is not an alarm: a short wait is fine).
(function () {
  "use strict";
  var box = document.getElementById("unblock-requests");
  if (!box) return;
  var room = box.dataset.room;
  var list = document.getElementById("asks");
  var empty = document.getElementById("no-asks");
  var template = document.getElementById("ask-template");
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var csrf = csrfMeta ? csrfMeta.content : "";
  var REFRESH_MS = 5000;

  function when(ts) {  // in the school's own zone, like every time on every page (localtime.js)
    return window.schoolTime ? window.schoolTime(ts, false, true) : ts;
  }

  function show(requests) {
    var ids = {};
    requests.forEach(function (r) {
      ids[r.id] = true;
      if (document.getElementById("ask-" + r.id)) return;
      var item = template.content.firstElementChild.cloneNode(true);
      item.id = "ask-" + r.id;
      item.dataset.requestId = r.id;
      item.querySelector(".ask-domain").textContent = r.domain;
      item.querySelector(".ask-seat").textContent = " " + (r.seat || r.device) + " ";
      item.querySelector(".ask-ts").textContent = when(r.ts);
      list.appendChild(item);
    });
    Array.prototype.slice.call(list.children).forEach(function (item) {
      if (!ids[item.dataset.requestId]) item.remove();
    });
    empty.hidden = list.children.length > 0;
  }

  function refresh() {
    fetch("/api/v1/rooms/" + encodeURIComponent(room) + "/unblock-requests",
          {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (requests) { if (requests) show(requests); })
      .catch(function () {});
  }

  list.addEventListener("click", function (e) {
    var btn = e.target.closest("button[data-action]");
    if (!btn) return;
    var item = btn.closest("li");
    item.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    fetch("/api/v1/unblock-requests/" + encodeURIComponent(item.dataset.requestId) + "/" + btn.dataset.action, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrf},
      body: "{}"
    }).then(function (r) {
      if (r.ok || r.status === 409) {
        item.classList.add(btn.dataset.action === "allow" ? "allowed" : "dismissed");
        item.remove();
        empty.hidden = list.children.length > 0;
      } else {
        item.querySelectorAll("button").forEach(function (b) { b.disabled = false; });
      }
    });
  });

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
