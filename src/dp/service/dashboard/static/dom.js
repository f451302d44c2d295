// Building DOM from data. Everything user-provided goes in as text (textContent or text
// nodes), never as HTML, so task output such as "<script>" shows as the characters it is.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function time(iso) {
  if (!iso) return "";
  const date = typeof iso === "number" ? new Date(iso * 1000) : new Date(iso);
  return date.toLocaleString(undefined, { hour12: false });
}

// A run's scheduled time in its schedule's zone ("29/03/2026, 00:00:00 Europe/Berlin").
export function scheduled(run) {
  if (!run.scheduled_for) return "";
  const zone = run.schedule_tz || "UTC";
  try {
    return `${new Date(run.scheduled_for).toLocaleString(undefined, { hour12: false, timeZone: zone })} ${zone}`;
  } catch {
    return `${new Date(run.scheduled_for).toISOString()} UTC`; // a zone this browser does not know
  }
}

export function duration(seconds) {
  if (seconds === undefined || seconds === null) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  return minutes < 120 ? `${minutes} min ${Math.round(seconds % 60)} s` : `${(minutes / 60).toFixed(1)} h`;
}

export function badge(status) {
  return h("span", { class: `badge s-${status}`, text: status });
}

export function runLink(runId) {
  return h("a", { href: `#/run/${encodeURIComponent(runId)}`, class: "mono", text: runId });
}

export function message(text, kind = "error") {
  return h("p", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status", text });
}

/** Show the live stream's state ("live" or "offline") in the header. */
export function setLive(state) {
  const live = document.getElementById("live");
  live.textContent = state;
  live.className = `live ${state}`;
}

/** Call `fn` at most once per `ms`, after the last call (coalescing bursts). */
export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** Replace `el`'s children (skipping null/false, flattening arrays, strings as text). */
export function fill(el, ...children) {
  clear(el);
  append(el, children);
  return el;
}
