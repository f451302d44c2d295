// The run statuses and the set of them that is live (running or queued): the same sets as
// dp/statuses.py (RunStatus, LIVE_RUN); tests/test_statuses.py holds the two together.

export const RUN_STATUSES = ["queued", "running", "succeeded", "failed", "partial", "interrupted", "cancelled"];
export const LIVE_RUN = ["queued", "running"];

export function live(run) {
  return LIVE_RUN.includes(run.status);
}
