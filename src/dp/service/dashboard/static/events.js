// Events: the bus's recent events, live, filtered by a topic pattern; dead letters if kept.

import { api, stream } from "./api.js";
import { clear, h, message, setLive, time, fill } from "./dom.js";

const KEEP = 500;

export function eventsPage(main, query) {
  const pattern = query.get("pattern") || "**";
  const input = h("input", { name: "pattern", value: pattern, class: "mono", "aria-label": "topic pattern", placeholder: "e.g. sales.*.created or dp.run.**" });
  const form = h("form", { class: "filters" }, h("label", {}, "Topic pattern ", input), h("button", { type: "submit", text: "Filter" }));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/events?pattern=${encodeURIComponent(input.value.trim() || "**")}`;
  });
  const body = h("tbody", {});
  const table = h("table", { class: "events" }, h("thead", {}, h("tr", {}, ["time", "topic", "type", "source", "payload"].map((t) => h("th", { text: t })))), body);
  const note = h("div", {});
  const dead = h("section", {});
  main.append(h("h1", { text: "Events" }), form, note, table, h("h2", { text: "Dead letters" }), dead);

  function row(e) {
    return h(
      "tr",
      {},
      h("td", { text: time(e.timestamp) }),
      h("td", { class: "mono", text: e.topic }),
      h("td", { text: e.event_type }),
      h("td", { text: e.source }),
      h("td", { class: "mono payload", text: e.payload }),
    );
  }

  function add(events) {
    const fragment = document.createDocumentFragment();
    for (const e of [...events].reverse()) fragment.appendChild(row(e));
    body.insertBefore(fragment, body.firstChild);
    while (body.childElementCount > KEEP) body.lastElementChild.remove();
  }

  async function load() {
    try {
      const data = await api(`/ui/events?pattern=${encodeURIComponent(pattern)}`);
      clear(note);
      clear(body);
      add(data.items);
      if (!data.items.length) note.append(message("No recent events match.", "info"));
      fill(dead, 
        data.dead_letters === null
          ? h("p", { class: "muted", text: "This bus keeps no dead letters." })
          : data.dead_letters.length
            ? h("table", { class: "events" }, h("tbody", {}, data.dead_letters.map(row)))
            : h("p", { class: "muted", text: "None." }),
      );
    } catch (error) {
      fill(note, message(error.message));
    }
  }

  load();
  return stream({ events: pattern }, (batch) => {
    if (batch.resync) return load();
    if (batch.events?.length) {
      clear(note);
      add(batch.events);
    }
  }, setLive);
}
