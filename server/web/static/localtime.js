// Times as staff read them: in the school's own time zone (the page's <body data-tz>), never
// UTC, on every page (server/localtime.py does the same on the server side).
(function () {
  "use strict";
  var tz = document.body.dataset.tz || "Europe/London";
  var formats = {};

  function format(withDate, seconds) {
    var key = (withDate ? "d" : "") + (seconds ? "s" : "");
    if (!formats[key]) {
      var opts = {timeZone: tz, hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short"};
      if (seconds) opts.second = "2-digit";
      if (withDate) { opts.year = "numeric"; opts.month = "2-digit"; opts.day = "2-digit"; }
      try {
        formats[key] = new Intl.DateTimeFormat("en-GB", opts);
      } catch (e) {  // an unknown zone: the server checked it, but never show nothing
        delete opts.timeZone;
        formats[key] = new Intl.DateTimeFormat("en-GB", opts);
      }
    }
    return formats[key];
  }

  // schoolTime("2026-07-01T08:31:05.120Z") -> "09:31:05 BST"; withDate adds "01/07/2026, ".
  window.schoolTime = function (ts, withDate, noSeconds) {
    if (!ts) return "";
    var when = new Date(ts);
    if (isNaN(when.getTime())) return String(ts);
    return format(!!withDate, !noSeconds).format(when);
  };
})();
