// The block page: the key stage's words (managed storage, written by the agent into the
// browser policy: agent/filter/blockpage.py), a picture, a recorded message, and "Ask my
// teacher", which asks the agent through the native messaging host (a request with the
// blocked domain, shown on the teacher's room page).  Nothing here reads any page.
"use strict";

const HOST = "uk.sch.classroom_safety.ask";
const $ = (id) => document.getElementById(id);
const domain = decodeURIComponent(location.hash.slice(1)).toLowerCase();
let settings = {};

function play(file) {
  if (!file || !settings.volume) return;
  const sound = $("sound");
  sound.src = "sounds/" + file;
  sound.volume = Math.max(0, Math.min(1, settings.volume / 100));
  sound.play().catch(() => {});  // a browser that will not play before a tap: the words are there
}

function show(values) {
  settings = values || {};
  if (settings.language) document.documentElement.lang = settings.language;
  if (settings.blocked) $("message").textContent = settings.blocked;
  if (settings.ask_teacher) $("ask-words").textContent = settings.ask_teacher;
  $("ask").hidden = settings.can_ask === false || !domain;
  $("domain").textContent = domain;
}

function asked(answer) {
  if (!answer || !answer.ok) {
    $("ask").disabled = false;  // the words already say "ask a grown-up"
    return;
  }
  document.body.classList.add("asked");
  $("picture").src = "images/asked_teacher.svg";
  $("message").textContent = settings.asked_teacher || "Your teacher has been asked. Well done.";
  $("ask").hidden = true;
  play(settings.sound_asked);
}

$("ask").addEventListener("click", () => {
  $("ask").disabled = true;
  chrome.runtime.sendNativeMessage(HOST, {op: "ask", domain: domain}, (answer) => {
    if (chrome.runtime.lastError) answer = null;
    asked(answer);
  });
});

chrome.storage.managed.get(null, (values) => {
  show(values);
  play(settings.sound_blocked);
});
// Just installed, the policy's values can arrive a moment after the page.
chrome.storage.onChanged.addListener((changes, area) => {
  if (area !== "managed") return;
  chrome.storage.managed.get(null, show);
});
show({});
