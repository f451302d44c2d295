// Polling sources on the pipelines page: each one's interval, last poll, last error, circuit,
// cursor and holder, as GET /sources reports them, refreshed every few seconds. Nothing is
// shown when the service has no sources.

import { api } from "./api.js";
import { badge, clear, fill, h, message, time } from "./dom.js";

const REFRESH_MS = 5000;

/** The section element and a function that stops its refreshing. */
export function sourcesSection() {
  const box = h("section", { class: "sources", id: "sources" });
  async function load() {
    try {
      const page = await api("/sources");
      if (!page.items.length) clear(box);
      else fill(box, h("h2", { text: "Polling sources" }), sourceTable(page.items));
    } catch (error) {
      fill(box, h("h2", { text: "Polling sources" }), message(error.message));
    }
  }
  load();
  const timer = setInterval(load, REFRESH_MS);
  return [box, () => clearInterval(timer)];
}

function seconds(value) {
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value} s`;
}

function sourceTable(items) {
  const head = ["source", "topic", "every", "last poll", "circuit", "last error", "cursor", "polled by"];
  const rows = items.map((s) =>
    h(
      "tr",
      { "data-source": s.name },
      h("td", { class: "mono", text: s.name, title: s.description || undefined }),
      h("td", { class: "mono", text: s.topic }),
      h("td", { text: seconds(s.every) }),
      h("td", { text: time(s.last_poll_at) }),
      h(
        "td",
        {},
        badge(s.circuit),
        s.consecutive_failures ? h("span", { class: "muted", text: ` ${s.consecutive_failures} failures` }) : null,
      ),
      h("td", { class: "mono error-text", text: s.last_error || "" }),
      h("td", { class: "mono", text: s.cursor === null || s.cursor === undefined ? "" : JSON.stringify(s.cursor) }),
      h("td", { class: "mono", text: s.holder || "" }),
    ),
  );
  return h(
    "table",
    { class: "small" },
    h("thead", {}, h("tr", {}, head.map((name) => h("th", { text: name })))),
    h("tbody", {}, rows),
  );
}
