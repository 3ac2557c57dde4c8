// Rollout page: refresh the per-device version table while devices pick up a new version.
// A plain JSON poll every 5 s while the page is visible (technician page; not the alert path).
(function () {
  "use strict";
  var table = document.getElementById("rollout-status");
  if (!table) return;

  function refresh() {
    if (document.hidden) return;
    fetch("/api/v1/config/status", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (status) {
        if (!status) return;
        status.rooms.forEach(function (room) {
          room.devices.forEach(function (d) {
            var row = table.querySelector('tr[data-device="' + d.device + '"]');
            if (!row) return;
            row.querySelector(".running").textContent = d.running || "—";
            var state = row.querySelector(".state");
            state.className = "state state-" + d.state;
            state.textContent = d.state + (d.reason ? ": " + d.reason : "");
            row.querySelector(".online").textContent = d.online;
            row.querySelector(".event").textContent = (d.event || "") + " " + window.schoolTime(d.event_ts, true, true);
          });
        });
      })
      .catch(function () { /* the next round tries again */ });
  }
  setInterval(refresh, 5000);
})();
