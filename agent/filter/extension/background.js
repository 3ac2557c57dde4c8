// Classroom safety block page (agent/filter/extension): a page a child understands in place
// of the browser's error when a site is not allowed.
//
// Only the main frame's failed navigations are looked at, and only two errors: the
// school's policy refused the address (ERR_BLOCKED_BY_ADMINISTRATOR: the browser
// allowlist) or the device's DNS filter refused the name (ERR_NAME_NOT_RESOLVED: the
// dnsmasq allowlist answers NXDOMAIN).  The tab is sent to blocked.html with the
// address's host name and nothing else: no path, no query, never the page's content.
"use strict";

const REFUSED = new Set(["net::ERR_BLOCKED_BY_ADMINISTRATOR", "net::ERR_NAME_NOT_RESOLVED"]);

chrome.webNavigation.onErrorOccurred.addListener((details) => {
  if (details.frameId !== 0 || !REFUSED.has(details.error)) return;
  let host;
  try {
    const url = new URL(details.url);
    if (url.protocol !== "http:" && url.protocol !== "https:") return;
    host = url.hostname;
  } catch (e) {
    return;
  }
  const page = chrome.runtime.getURL("blocked.html") + "#" + encodeURIComponent(host);
  chrome.tabs.update(details.tabId, {url: page});
});
