// The Gantt timeline of a run, on a canvas: one row per task run, one bar per attempt.

const COLORS = { running: "#2d7ff9", succeeded: "#2e9e5b", failed: "#d64545", skipped: "#a0a0a0", cancelled: "#c08a2b", pending: "#d0d0d0" };
const LABEL = 180;
// The canvas stays at most this tall: a 5,000-row run at 6 px a row was a 30,000 px canvas,
// whose backing store alone took most of a second to allocate and clear (software raster).
// Past 500 rows the rows get thinner (down to a fraction of a pixel) instead of the canvas taller.
const MAX_HEIGHT = 8000;

function bars(record) {
  const secs = (v) => (v === null || v === undefined ? null : typeof v === "number" ? v : new Date(v).getTime() / 1000);
  if (Array.isArray(record.attempts) && record.attempts.length) {
    return record.attempts.map((a) => ({ start: secs(a.started_at ?? a.start), end: secs(a.finished_at ?? a.end), status: a.status }));
  }
  return [{ start: record.start ?? secs(record.started_at), end: record.end ?? secs(record.finished_at), status: record.status }];
}

export function drawGantt(canvas, records, onPick) {
  const now = Date.now() / 1000;
  const rows = records.map((r) => ({ record: r, bars: bars(r).filter((b) => b.start) })).filter((r) => r.bars.length);
  rows.sort((a, b) => a.bars[0].start - b.bars[0].start);
  const rowH = Math.min(16, MAX_HEIGHT / Math.max(1, rows.length));
  const width = Math.max(400, canvas.parentElement.clientWidth - 4);
  const height = Math.ceil(Math.max(rowH, rows.length * rowH)) + 20;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${canvas.height / ratio}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!rows.length) {
    ctx.fillStyle = "#888";
    ctx.fillText("No task has started yet.", 8, 14);
    return;
  }
  let t0 = Infinity;
  let t1 = -Infinity;
  for (const row of rows) for (const b of row.bars) {
    t0 = Math.min(t0, b.start);
    t1 = Math.max(t1, b.end ?? now);
  }
  const span = Math.max(t1 - t0, 0.001);
  const scale = (width - LABEL - 10) / span;
  ctx.font = "11px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  rows.forEach((row, i) => {
    const y = i * rowH;
    if (rowH >= 10) {
      ctx.fillStyle = "#333";
      const label = row.record.instance ? `${row.record.task}[${row.record.instance}]` : row.record.task;
      ctx.fillText(label.length > 28 ? `${label.slice(0, 27)}…` : label, 4, y + rowH / 2);
    }
    for (const b of row.bars) {
      ctx.fillStyle = COLORS[b.status] || "#888";
      const x = LABEL + (b.start - t0) * scale;
      const gap = rowH >= 4 ? 1 : 0;
      ctx.fillRect(x, y + gap, Math.max(1, ((b.end ?? now) - b.start) * scale), Math.max(0.5, rowH - 2 * gap));
    }
  });
  ctx.fillStyle = "#666";
  ctx.fillText(`0 s`, LABEL, rows.length * rowH + 10);
  ctx.fillText(`${span.toFixed(span < 10 ? 2 : 0)} s`, width - 60, rows.length * rowH + 10);
  canvas.onclick = (event) => {
    const rect = canvas.getBoundingClientRect();
    const row = rows[Math.floor((event.clientY - rect.top) / rowH)];
    if (row) onPick(row.record);
  };
}
