// One run: its DAG by parallel levels with live task states, a Gantt timeline of every
// attempt, each task's attempts with output and traceback, its parameters, Cancel and Resume.

import { api, stream } from "./api.js";
import { badge, clear, debounce, duration, h, message, runLink, scheduled, setLive, time, fill } from "./dom.js";
import { drawGantt } from "./gantt.js";
import { resumable, resume, retry, retryable } from "./runs.js";
import { live } from "./statuses.js";

const COLUMN = 230;
const ROW = 34;
const NODE_W = 200;
const NODE_H = 26;
const SEVERITY = { succeeded: 0, pending: 1, queued: 2, skipped: 3, cancelled: 4, failed: 5 };
const FINISHED = new Set(["succeeded", "failed", "partial", "cancelled"]);

const key = (task, instance) => `${task}\u0000${instance || ""}`;
const epoch = (iso) => (iso ? new Date(iso).getTime() / 1000 : null);

export function runPage(main, runId) {
  const header = h("section", { class: "run-header" }, h("p", { class: "muted", text: "Loading…" }));
  const summary = h("p", { class: "summary" });
  const dag = h("div", { class: "dag", id: "dag" });
  const gantt = h("canvas", { class: "gantt", id: "gantt" });
  const panel = h("section", { class: "task-panel", id: "task-panel" });
  main.append(
    header,
    summary,
    h("h2", { text: "Graph" }),
    dag,
    h("h2", { text: "Timeline" }),
    h("div", { class: "gantt-box" }, gantt),
    panel,
  );

  // tasks: every task run by key(task, instance); byTask: the same records per task name, so
  // repainting a node looks at its own instances, not at all 5,000 task runs each time
  const state = { run: null, plan: null, tasks: new Map(), byTask: new Map(), nodes: new Map(), selected: null, dirty: new Set() };

  function setRecord(k, record) {
    state.tasks.set(k, record);
    let instances = state.byTask.get(record.task);
    if (!instances) state.byTask.set(record.task, (instances = new Map()));
    instances.set(k, record);
  }

  async function load() {
    let detail;
    try {
      detail = await api(`/runs/${encodeURIComponent(runId)}`);
    } catch (error) {
      fill(header, h("h1", { class: "mono", text: runId }), message(error.message));
      return;
    }
    state.run = detail;
    state.tasks.clear();
    state.byTask.clear();
    for (const t of detail.tasks) {
      setRecord(key(t.task, t.instance), { ...t, start: epoch(t.started_at), end: epoch(t.finished_at) });
    }
    renderHeader();
    if (!state.plan || state.plan.dag_id !== detail.plan?.dag_id) {
      state.plan = detail.plan || { parallel_levels: [], edges: [], tasks: {} };
      renderDag();
    }
    for (const name of state.nodes.keys()) state.dirty.add(name);
    paint();
    if (state.selected) showTask(state.selected.task, state.selected.instance);
  }

  function renderHeader() {
    const run = state.run;
    const actions = h("div", { class: "actions" });
    const feedback = h("div", { class: "form-error", role: "alert" });
    if (live(run)) {
      actions.append(action("Cancel", "cancel", () => api(`/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" }), feedback));
    }
    if (resumable(run)) actions.append(action("Resume", "resume", () => resume(run), feedback));
    if (retryable(run)) {
      actions.append(
        action("Retry from failure", "retry", async () => {
          const started = await retry(run);
          location.hash = `#/run/${encodeURIComponent(started.run_id)}`;
        }, feedback),
      );
    }
    const reused = Object.entries(run.reused || {});
    fill(header, 
      h("h1", {}, h("span", { class: "mono", text: run.run_id }), " ", badge(run.status), run.stale ? h("span", { class: "badge stale", text: "stale" }) : null),
      h(
        "dl",
        { class: "facts" },
        fact("pipeline", h("a", { href: `#/runs?pipeline=${encodeURIComponent(run.pipeline)}`, text: run.pipeline })),
        fact("trigger", run.trigger),
        run.scheduled_for ? fact("scheduled for", h("span", { class: "scheduled", text: scheduled(run) })) : null,
        run.parent_run_id ? fact("retry of", runLink(run.parent_run_id)) : null,
        reused.length ? fact("reused", h("span", { class: "reused" }, ...reused.flatMap(([task, from], i) => [i ? ", " : "", `${task} from `, runLink(from)]))) : null,
        fact("created", time(run.created_at)),
        fact("started", time(run.started_at)),
        fact("finished", time(run.finished_at)),
        fact("duration", duration(run.duration)),
        run.results ? fact("results", h("span", { class: "mono", text: run.results })) : null,
      ),
      run.error ? h("p", { class: "run-error", text: run.error }) : null,
      h("details", { open: Object.keys(run.params || {}).length > 0 }, h("summary", { text: "Parameters" }), h("pre", { class: "params", text: JSON.stringify(run.params, null, 2) })),
      actions,
      feedback,
    );
  }

  function action(label, cls, call, feedback) {
    const button = h("button", { type: "button", class: cls, text: label });
    button.addEventListener("click", async () => {
      button.disabled = true;
      clear(feedback);
      try {
        await call();
      } catch (e) {
        feedback.append(message(e.message));
        button.disabled = false;
      }
    });
    return button;
  }

  // --- the DAG ------------------------------------------------------------------------------

  function renderDag() {
    clear(dag);
    state.nodes.clear();
    const plan = state.plan;
    const position = new Map();
    let height = 0;
    plan.parallel_levels.forEach((level, column) => {
      level.forEach((name, row) => position.set(name, [10 + column * COLUMN, 10 + row * ROW]));
      height = Math.max(height, level.length);
    });
    const width = plan.parallel_levels.length * COLUMN;
    dag.style.height = `${height * ROW + 20}px`;
    const mapped = new Set(plan.edges.filter((e) => e.mode === "chunk").map((e) => e.downstream));
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height * ROW + 20);
    const paths = { data: [], control: [] };
    for (const edge of plan.edges) {
      const a = position.get(edge.upstream);
      const b = position.get(edge.downstream);
      if (!a || !b) continue;
      const [x1, y1, x2, y2] = [a[0] + NODE_W, a[1] + NODE_H / 2, b[0], b[1] + NODE_H / 2];
      const mid = (x1 + x2) / 2;
      paths[edge.kind === "control" ? "control" : "data"].push(`M${x1} ${y1}C${mid} ${y1} ${mid} ${y2} ${x2} ${y2}`);
    }
    for (const [kind, segments] of Object.entries(paths)) {
      const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
      path.setAttribute("d", segments.join(""));
      path.setAttribute("class", `edge ${kind}`);
      svg.appendChild(path);
    }
    const fragment = document.createDocumentFragment();
    fragment.appendChild(svg);
    for (const [name, [x, y]] of position) {
      const meta = plan.tasks[name] || {};
      const node = h(
        "div",
        { class: "node s-pending", "data-task": name, title: name, role: "button", tabindex: "0" },
        h("span", { class: "name", text: name }),
        meta.stream_output ? h("span", { class: "tag", title: "streams its output in chunks", text: "stream" }) : null,
        mapped.has(name) ? h("span", { class: "tag count", title: "runs once per chunk", text: "per chunk" }) : null,
      );
      node.style.left = `${x}px`;
      node.style.top = `${y}px`;
      fragment.appendChild(node);
      state.nodes.set(name, { node, mapped: mapped.has(name) });
    }
    dag.appendChild(fragment);
  }

  dag.addEventListener("click", (event) => {
    const node = event.target.closest(".node");
    if (node) showTask(node.dataset.task, null);
  });
  dag.addEventListener("keydown", (event) => {
    const node = event.target.closest(".node");
    if (node && event.key === "Enter") showTask(node.dataset.task, null);
  });

  function instancesOf(name) {
    const instances = state.byTask.get(name);
    return instances ? [...instances.values()] : [];
  }

  let frame = 0;
  function paint() {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      for (const name of state.dirty) {
        const entry = state.nodes.get(name);
        if (!entry) continue;
        const instances = instancesOf(name);
        let status = "pending";
        if (instances.some((r) => r.status === "running")) status = "running";
        else for (const r of instances) if ((SEVERITY[r.status] ?? 1) > (SEVERITY[status] ?? 1) || status === "pending") status = r.status;
        entry.node.className = `node s-${status}${state.selected?.task === name ? " selected" : ""}`;
        if (entry.mapped) {
          const count = entry.node.querySelector(".count");
          const done = instances.filter((r) => r.status === "succeeded").length;
          count.textContent = instances.length ? `${done}/${instances.length} chunks` : "per chunk";
        }
      }
      state.dirty.clear();
      const counts = {};
      for (const r of state.tasks.values()) counts[r.status] = (counts[r.status] || 0) + 1;
      const total = Object.keys(state.plan?.tasks || {}).length;
      summary.textContent = `${total} tasks, ${state.tasks.size} task runs: ` + Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(" · ");
      redrawGantt();
    });
  }

  // drawn at once, then at most every 200 ms while changes keep coming
  let ganttTimer = null;
  let ganttStale = false;
  function redrawGantt() {
    if (ganttTimer) {
      ganttStale = true;
      return;
    }
    drawGantt(gantt, [...state.tasks.values()], (record) => showTask(record.task, record.instance));
    ganttTimer = setTimeout(() => {
      ganttTimer = null;
      if (ganttStale) {
        ganttStale = false;
        redrawGantt();
      }
    }, 200);
  }

  // --- a task's attempts --------------------------------------------------------------------

  async function showTask(name, instance) {
    const instances = instancesOf(name);
    const chosen = instances.find((r) => r.instance === instance) || instances[0];
    const previous = state.selected?.task;
    state.selected = { task: name, instance: chosen ? chosen.instance : "" };
    if (previous) state.dirty.add(previous);
    state.dirty.add(name);
    paint();
    const meta = state.plan?.tasks?.[name] || {};
    fill(panel, 
      h("h2", {}, "Task ", h("span", { class: "mono", text: name })),
      meta.description ? h("p", { text: meta.description }) : null,
    );
    if (instances.length > 1 || (chosen && chosen.instance)) {
      const picker = h("select", { "aria-label": "instance" }, instances.map((r) => h("option", { value: r.instance, text: `${r.instance || "(plain)"} · ${r.status}`, selected: r === chosen })));
      picker.addEventListener("change", () => showTask(name, picker.value));
      panel.append(h("label", {}, "Instance ", picker));
    }
    if (!chosen) {
      panel.append(message("Not started yet.", "info"));
      return;
    }
    const box = h("div", { class: "attempts" }, h("p", { class: "muted", text: "Loading…" }));
    panel.append(box);
    // each attempt's record (GET /runs/{id} lists them), with its output and traceback
    const logsUrl = `/runs/${encodeURIComponent(runId)}/tasks/${encodeURIComponent(name)}/logs?instance=${encodeURIComponent(chosen.instance)}`;
    const listed = Array.isArray(chosen.attempts) && chosen.attempts.length ? chosen.attempts : [null];
    let attempts;
    try {
      attempts = await Promise.all(
        listed.map(async (record) => {
          const number = record?.attempt ?? record?.number;
          const logs = await api(number ? `${logsUrl}&attempt=${number}` : logsUrl);
          return {
            number: number ?? logs.attempt,
            status: record?.status ?? logs.status,
            start: record?.started_at ?? record?.start ?? chosen.started_at,
            end: record?.finished_at ?? record?.end ?? chosen.finished_at,
            host: record?.host,
            pid: record?.pid,
            queue: record?.queue ?? chosen.queue,
            error: logs.error ?? record?.error,
            output: logs.output,
            traceback: logs.traceback,
          };
        }),
      );
    } catch (error) {
      fill(box, message(error.message));
      return;
    }
    fill(box, ...[...attempts].reverse().map(attemptView));
  }

  function attemptView(attempt) {
    const where = [attempt.host, attempt.pid].filter(Boolean).join(" pid ");
    const queued = attempt.status === "queued";
    const queue = attempt.queue ? (queued ? `waiting on queue ${attempt.queue} (no worker has taken it yet)` : `from queue ${attempt.queue}`) : "";
    return h(
      "article",
      { class: "attempt" },
      h("h3", {}, `Attempt ${attempt.number ?? attempt.attempt ?? ""} `, badge(attempt.status)),
      h("p", { class: "muted", text: [queued ? "" : time(attempt.start), attempt.end ? `→ ${time(attempt.end)}` : "", where ? `on ${where}` : "", queue].filter(Boolean).join(" ") }),
      attempt.error ? h("p", { class: "task-error", text: attempt.error }) : null,
      h("h4", { text: "Output" }),
      h("pre", { class: "output", text: attempt.output || "(nothing printed)" }),
      attempt.traceback ? [h("h4", { text: "Traceback" }), h("pre", { class: "traceback", text: attempt.traceback })] : null,
    );
  }

  // --- live ---------------------------------------------------------------------------------

  const reload = debounce(load, 300);
  load();
  const stop = stream({ run: runId }, (batch) => {
    if (batch.resync) return reload();
    for (const t of batch.tasks || []) {
      const k = key(t.task, t.instance);
      setRecord(k, { ...state.tasks.get(k), ...t, started_at: t.start ? new Date(t.start * 1000).toISOString() : null, finished_at: t.end ? new Date(t.end * 1000).toISOString() : null });
      state.dirty.add(t.task);
      if (state.selected?.task === t.task && t.status !== "running") reload();
    }
    if (batch.tasks?.length) paint();
    for (const run of batch.runs || []) {
      if (run.run_id !== runId || !state.run) continue;
      if (run.status !== state.run.status) {
        state.run.status = run.status;
        renderHeader();
      }
      if (FINISHED.has(run.status) || run.status === "interrupted") reload(); // the final records
    }
  }, setLive);
  return () => {
    stop();
    clearTimeout(ganttTimer);
  };
}

function fact(label, value) {
  return [h("dt", { text: label }), h("dd", {}, value ?? "")];
}
