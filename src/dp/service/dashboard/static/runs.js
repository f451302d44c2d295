// Runs: a page of runs at a time, filtered by pipeline, status and trigger; live.

import { api, stream } from "./api.js";
import { badge, clear, debounce, duration, h, message, runLink, scheduled, setLive, time, fill } from "./dom.js";
import { RUN_STATUSES } from "./statuses.js";

const TRIGGERS = ["api", "cron", "event", "manual", "retry"];
const PAGE = 50;

export function runsPage(main, query) {
  const filters = {
    pipeline: query.get("pipeline") || "",
    status: query.get("status") || "",
    trigger: query.get("trigger") || "",
  };
  const offset = Math.max(0, Number(query.get("offset")) || 0);
  const pipelineSelect = select("pipeline", [], filters.pipeline, "all pipelines");
  const form = h(
    "form",
    { class: "filters" },
    pipelineSelect,
    select("status", RUN_STATUSES, filters.status, "any status"),
    select("trigger", TRIGGERS, filters.trigger, "any trigger"),
  );
  form.addEventListener("change", () => {
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(form)) if (value) next.set(key, value);
    location.hash = `#/runs?${next}`;
  });
  const table = h("div", { class: "runs" }, h("p", { class: "muted", text: "Loading…" }));
  const pager = h("div", { class: "pager" });
  main.append(h("h1", { text: "Runs" }), form, table, pager);

  api("/pipelines").then((data) => {
    for (const p of data.items) pipelineSelect.append(h("option", { value: p.name, text: p.name, selected: p.name === filters.pipeline }));
  }).catch(() => {});

  const shown = new Map(); // run id -> its row

  async function load() {
    const params = new URLSearchParams({ limit: PAGE, offset });
    for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
    let page;
    try {
      page = await api(`/runs?${params}`);
    } catch (error) {
      fill(table, message(error.message));
      return;
    }
    shown.clear();
    const rows = page.items.map((run) => {
      const row = runRow(run, load);
      shown.set(run.run_id, row);
      return row;
    });
    fill(table, 
      rows.length
        ? h(
            "table",
            {},
            h("thead", {}, h("tr", {}, ["run", "pipeline", "status", "trigger", "scheduled for", "created", "duration", "error", ""].map((t) => h("th", { text: t })))),
            h("tbody", {}, rows),
          )
        : message("No runs match.", "info"),
    );
    renderPager(page);
  }

  function renderPager(page) {
    const last = Math.min(page.offset + page.items.length, page.total);
    const link = (label, to, enabled) => {
      const next = new URLSearchParams();
      for (const [key, value] of Object.entries(filters)) if (value) next.set(key, value);
      if (to) next.set("offset", to);
      return enabled ? h("a", { href: `#/runs?${next}`, class: "button", text: label }) : h("span", { class: "button disabled", text: label });
    };
    fill(pager, 
      link("← newer", Math.max(0, offset - PAGE), offset > 0),
      h("span", { class: "count", text: page.total ? `${page.offset + 1}–${last} of ${page.total.toLocaleString("en")}` : "0 runs" }),
      link("older →", offset + PAGE, last < page.total),
    );
  }

  const reload = debounce(load, 400);
  load();
  return stream({}, (batch) => {
    if (batch.resync) return load();
    for (const run of batch.runs || []) {
      const row = shown.get(run.run_id);
      if (row) row.querySelector(".badge").replaceWith(badge(run.status));
      else if (offset === 0) reload(); // a new run on the first page
    }
  }, setLive);
}

function select(name, values, current, all) {
  return h(
    "select",
    { name, "aria-label": name },
    h("option", { value: "", text: all }),
    values.map((v) => h("option", { value: v, text: v, selected: v === current })),
  );
}

export function resumable(run) {
  return run.status === "interrupted" || Boolean(run.stale);
}

// A finished run that did not succeed can be re-run from its failure (a new, linked run).
export function retryable(run) {
  return ["failed", "partial", "cancelled"].includes(run.status);
}

export async function retry(run) {
  return api(`/runs/${encodeURIComponent(run.run_id)}/retry`, { method: "POST", body: {} });
}

export async function resume(run) {
  return api(`/runs/${encodeURIComponent(run.run_id)}/resume`, { method: "POST", body: { force: Boolean(run.stale) } });
}

function runRow(run, reload) {
  const actions = h("td", {});
  const error = h("td", { class: "error-cell", text: run.error || "" });
  if (resumable(run)) {
    const button = h("button", { type: "button", class: "resume", text: "Resume" });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await resume(run);
        reload();
      } catch (e) {
        error.textContent = e.message;
        button.disabled = false;
      }
    });
    actions.append(button);
  }
  return h(
    "tr",
    { "data-run": run.run_id },
    h("td", {}, runLink(run.run_id)),
    h("td", { text: run.pipeline }),
    h("td", {}, badge(run.status), run.stale ? h("span", { class: "badge stale", title: "its owner is gone", text: "stale" }) : null),
    h("td", { class: "mono" }, run.parent_run_id ? h("span", { title: `retry of ${run.parent_run_id}`, text: run.trigger }) : run.trigger),
    h("td", { class: "scheduled", text: scheduled(run) }),
    h("td", { text: time(run.created_at) }),
    h("td", { text: duration(run.duration) }),
    error,
    actions,
  );
}
