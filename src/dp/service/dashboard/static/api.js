// Talking to dp serve: JSON calls with the API token, and the live stream of changes.
// The token lives in sessionStorage (this tab's session) and travels only in the
// Authorization header, never in a cookie, so another site cannot make the browser use it.

const TOKEN_KEY = "dp.token";

export class ApiError extends Error {
  constructor(status, error, detail) {
    super(detail || error || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

let askToken = async () => false; // replaced by the app: shows the token dialog

export function onTokenNeeded(ask) {
  askToken = ask;
}

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  if (token()) result.Authorization = `Bearer ${token()}`;
  return result;
}

/** Call the API; on 401/403 ask for the token once and retry. */
export async function api(path, { method = "GET", body } = {}) {
  for (let tries = 0; ; tries++) {
    const response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
    });
    if ((response.status === 401 || response.status === 403) && tries === 0) {
      const reason = response.status === 401 ? "This needs the API token." : "The API token is wrong.";
      if (await askToken(reason)) continue;
    }
    const data = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
    if (!response.ok) throw new ApiError(response.status, data?.error, data?.detail);
    return data;
  }
}

/**
 * Follow GET /ui/stream: `onBatch` gets each batch of changes. A fetch() stream (not
 * EventSource) so the token goes in a header. Reconnects after a drop; `onState` hears
 * "live" / "offline". Returns a function that stops it.
 */
export function stream(params, onBatch, onState = () => {}) {
  const controller = new AbortController();
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  let stopped = false;
  let connected = false;
  async function run() {
    while (!stopped) {
      try {
        const response = await fetch(`/ui/stream?${query}`, { headers: headers(), signal: controller.signal });
        if (response.status === 401 || response.status === 403) {
          onState("offline");
          if (!(await askToken("Live updates need the API token."))) return;
          continue;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        onState("live");
        if (connected) onBatch({ resync: true }); // changes may have been missed meanwhile
        connected = true;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = frame.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
            if (data) onBatch(JSON.parse(data));
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      onState("offline");
      if (!stopped) await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
  run();
  return () => {
    stopped = true;
    controller.abort();
  };
}
