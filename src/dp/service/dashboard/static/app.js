// The dashboard: a hash router over four pages, the token dialog, the live indicator.

import { onTokenNeeded, setToken, token } from "./api.js";
import { clear } from "./dom.js";
import { eventsPage } from "./events.js";
import { pipelinesPage } from "./pipelines.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";

const main = document.getElementById("main");
let leave = () => {};

const pages = [
  [/^#\/run\/(.+)$/, (m, q) => runPage(main, decodeURIComponent(m[1]), q), "runs"],
  [/^#\/runs$/, (m, q) => runsPage(main, q), "runs"],
  [/^#\/events$/, (m, q) => eventsPage(main, q), "events"],
  [/^#?\/?$/, (m, q) => pipelinesPage(main, q), "pipelines"],
];

function route() {
  leave();
  clear(main);
  const [path, search = ""] = location.hash.split("?");
  const query = new URLSearchParams(search);
  for (const [pattern, page, nav] of pages) {
    const match = path.match(pattern);
    if (!match) continue;
    for (const a of document.querySelectorAll("nav a[data-page]")) {
      a.classList.toggle("current", a.dataset.page === nav);
    }
    leave = page(match, query) || (() => {});
    return;
  }
  location.hash = "#/";
}

// --- the token, asked for once per browser session ---------------------------------------

const dialog = document.getElementById("token-dialog");
const input = document.getElementById("token-input");
const reason = document.getElementById("token-reason");
const tokenButton = document.getElementById("token-button");
let answer = null;

function showTokenState() {
  tokenButton.textContent = token() ? "Token ✓" : "Token";
}

function askToken(why) {
  reason.textContent = `${why || ""} It is kept for this browser session only.`.trim();
  input.value = "";
  if (!dialog.open) dialog.showModal();
  input.focus();
  return new Promise((resolve) => {
    answer = resolve;
  });
}

function closeToken(ok) {
  if (ok) setToken(input.value.trim());
  dialog.close();
  showTokenState();
  if (answer) answer(ok && Boolean(input.value.trim()));
  answer = null;
}

document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  closeToken(true);
});
document.getElementById("token-cancel").addEventListener("click", () => closeToken(false));
dialog.addEventListener("cancel", () => closeToken(false));
tokenButton.addEventListener("click", () => askToken("Enter the API token."));
onTokenNeeded(askToken);
showTokenState();

window.addEventListener("hashchange", route);
route();
