// Pipelines: each one's tasks, triggers (next fire time, circuit state), recent runs, and a
// Start form built from its run parameters; the polling sources above them.

import { api, stream } from "./api.js";
import { badge, clear, debounce, duration, h, message, runLink, setLive, time, fill } from "./dom.js";
import { sourcesSection } from "./sources.js";

export function pipelinesPage(main) {
  const list = h("div", { class: "cards" }, h("p", { class: "muted", text: "Loading…" }));
  const [sources, stopSources] = sourcesSection();
  main.append(h("h1", { text: "Pipelines" }), sources, list);
  const recent = new Map(); // pipeline -> element holding its recent runs

  async function load() {
    let pipelines, triggers;
    try {
      [pipelines, triggers] = await Promise.all([api("/pipelines"), api("/triggers")]);
    } catch (error) {
      fill(list, message(error.message));
      return;
    }
    clear(list);
    if (!pipelines.items.length) list.append(message("No pipelines defined.", "info"));
    for (const pipeline of pipelines.items) {
      const mine = triggers.items.filter((t) => t.pipeline === pipeline.name);
      const runs = h("div", { class: "recent" });
      const tasks = h("div", { class: "task-list" });
      recent.set(pipeline.name, runs);
      list.append(card(pipeline, mine, tasks, runs));
      loadTasks(pipeline.name, tasks);
      loadRecent(pipeline.name);
    }
  }

  async function loadTasks(name, box) {
    try {
      const detail = await api(`/pipelines/${encodeURIComponent(name)}`);
      const order = detail.plan.execution_order;
      fill(
        box,
        h("h3", { text: `Tasks (${order.length})` }),
        h("p", { class: "mono tasks", text: order.join(", ") }),
      );
    } catch (error) {
      fill(box, message(error.message));
    }
  }

  async function loadRecent(name) {
    const box = recent.get(name);
    if (!box) return;
    try {
      const page = await api(`/runs?pipeline=${encodeURIComponent(name)}&limit=5`);
      fill(box, recentRuns(name, page));
    } catch (error) {
      fill(box, message(error.message));
    }
  }

  const changed = new Set();
  const refresh = debounce(() => {
    for (const name of changed) loadRecent(name);
    changed.clear();
  }, 300);
  load();
  const stopStream = stream({}, (batch) => {
    if (batch.resync) return load();
    for (const run of batch.runs || []) changed.add(run.pipeline);
    refresh();
  }, setLive);
  return () => {
    stopSources();
    stopStream();
  };
}

function card(pipeline, triggers, tasks, recent) {
  return h(
    "section",
    { class: "card", "data-pipeline": pipeline.name },
    h("h2", { text: pipeline.name }),
    pipeline.description ? h("p", { text: pipeline.description }) : null,
    tasks,
    h("h3", { text: "Triggers" }),
    triggerTable(pipeline, triggers),
    h("h3", { text: "Recent runs" }),
    recent,
    pipeline.triggers.api ? startForm(pipeline) : h("p", { class: "muted", text: "Not started over HTTP (api=False)." }),
  );
}

function triggerTable(pipeline, triggers) {
  const rows = triggers.map((t) =>
    h(
      "tr",
      {},
      h("td", { text: t.kind }),
      h("td", { class: "mono", text: t.source || t.name }),
      h("td", { text: t.next_fire ? time(t.next_fire) : "" }),
      h("td", {}, t.circuit ? badge(t.circuit.state ?? t.circuit) : ""),
    ),
  );
  if (!rows.length) return h("p", { class: "muted", text: "Only manual and API starts." });
  return h(
    "table",
    { class: "small" },
    h("thead", {}, h("tr", {}, h("th", { text: "kind" }), h("th", { text: "source" }), h("th", { text: "next fire" }), h("th", { text: "circuit" }))),
    h("tbody", {}, rows),
  );
}

function recentRuns(name, page) {
  if (!page.items.length) return h("p", { class: "muted", text: "No runs yet." });
  return h(
    "div",
    {},
    h("ul", { class: "plain" }, page.items.map((r) => h("li", {}, badge(r.status), " ", runLink(r.run_id), " ", h("span", { class: "muted", text: `${time(r.created_at)} ${duration(r.duration)}` })))),
    h("a", { href: `#/runs?pipeline=${encodeURIComponent(name)}`, text: `all ${page.total} runs →` }),
  );
}

// --- the Start form -------------------------------------------------------------------------

const PARSERS = {
  int: (text) => {
    if (!/^[-+]?\d+$/.test(text)) throw new Error("must be a whole number");
    return Number(text);
  },
  float: (text) => {
    const value = Number(text);
    if (text === "" || Number.isNaN(value)) throw new Error("must be a number");
    return value;
  },
  str: (text) => text,
};

function parse(type, text) {
  const parser = PARSERS[type];
  if (parser) return parser(text);
  try {
    return JSON.parse(text);
  } catch {
    return text; // e.g. dates: the API parses and checks the text
  }
}

function startForm(pipeline) {
  const fields = [];
  const error = h("div", { class: "form-error", role: "alert" });
  const form = h("form", { class: "start", "data-pipeline": pipeline.name });
  for (const param of pipeline.run_parameters) {
    const id = `p-${pipeline.name}-${param.name}`;
    const fallback = pipeline.params?.[param.name] ?? param.default;
    let input;
    if (param.type === "bool") {
      input = h("input", { id, type: "checkbox", name: param.name });
      input.checked = Boolean(fallback);
    } else {
      input = h("input", {
        id,
        name: param.name,
        type: param.type === "int" || param.type === "float" ? "text" : "text",
        inputmode: param.type === "int" ? "numeric" : param.type === "float" ? "decimal" : undefined,
        placeholder: param.required ? "required" : `default: ${JSON.stringify(fallback)}`,
      });
    }
    fields.push({ param, input });
    form.append(
      h(
        "label",
        { for: id },
        h("span", { class: "pname", text: param.name }),
        param.required ? h("span", { class: "required", title: "required", text: " *" }) : null,
        h("span", { class: "ptype", text: ` ${param.type}` }),
      ),
      input,
    );
  }
  const button = h("button", { type: "submit", class: "primary", text: "Start" });
  form.append(button, error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear(error);
    const params = {};
    const problems = [];
    for (const { param, input } of fields) {
      if (param.type === "bool") {
        params[param.name] = input.checked;
        continue;
      }
      const text = input.value.trim();
      if (text === "") {
        if (param.required) problems.push(`${param.name}: required`);
        continue;
      }
      try {
        params[param.name] = parse(param.type, text);
      } catch (e) {
        problems.push(`${param.name}: ${e.message}`);
      }
    }
    if (problems.length) {
      error.append(message(problems.join("; ")));
      return;
    }
    button.disabled = true;
    try {
      const accepted = await api(`/pipelines/${encodeURIComponent(pipeline.name)}/runs`, { method: "POST", body: { params } });
      location.hash = `#/run/${encodeURIComponent(accepted.run_id)}`;
    } catch (e) {
      error.append(message(e.message));
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
