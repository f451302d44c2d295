"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against `dp serve`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api as playwright_api

from dp.store import RunRecord, RunStatus, SQLRunStore
from ports import free_port
from test_serve import AUTH, TOKEN, dp_serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PIPELINES = Path(__file__).with_name("dashboard_pipelines.py")
#: milliseconds Playwright waits for something that must happen
PATIENCE_MS = 20_000

if not CHROMIUM.exists() and not os.environ.get("DP_REQUIRE_BROWSER"):
    pytest.skip("Chromium is not installed: apt-get install chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `dp serve` of the dashboard's test pipelines; yields its URL and project."""
    project = tmp_path_factory.mktemp("dashboard-ui")
    shutil.copy(PIPELINES, project / "pipeline.py")
    port = free_port()
    with dp_serve(project, port):
        yield f"http://127.0.0.1:{port}", project


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: tuple[str, Path]) -> Iterator[Any]:
    """A fresh browser session (no token yet) that fails the test on any script error."""
    context = browser.new_context(base_url=server[0])
    tab = context.new_page()
    tab.set_default_timeout(PATIENCE_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    context.close()
    assert not errors, errors


def enter_token(page: Any) -> None:
    page.wait_for_selector("#token-dialog[open]")
    page.fill("#token-input", TOKEN)
    page.click("#token-save")


def start_from_pipelines_page(page: Any, pipeline: str) -> str:
    """Click a pipeline's Start button (entering the token), return the run page's run id."""
    page.goto("/")
    page.click(f"form[data-pipeline={pipeline}] button[type=submit]")
    enter_token(page)
    page.wait_for_url("**/#/run/*")
    run_id: str = page.url.split("#/run/")[1]
    return run_id


def test_start_a_pipeline_and_watch_it_succeed(page: Any) -> None:
    """Start from the form; the run page turns succeeded and shows the output, no reload."""
    page.goto("/")
    page.fill("#p-greet-name", "Ada")
    page.fill("#p-greet-times", "2")
    page.click("form[data-pipeline=greet] button[type=submit]")
    enter_token(page)
    page.wait_for_url("**/#/run/*")
    page.evaluate("window.__sameDocument = true")
    page.wait_for_selector(".run-header .badge.s-succeeded")
    page.wait_for_selector(".node[data-task=square] .count >> text=3/3 chunks")
    page.click(".node[data-task=hello]")
    assert "saying hello to Ada" in page.inner_text("#task-panel .output")
    assert page.evaluate("window.__sameDocument") is True  # never reloaded


def test_bad_parameters_are_refused_with_the_reason(page: Any) -> None:
    """A missing required parameter and a non-number are named before anything is sent."""
    page.goto("/")
    page.fill("#p-greet-times", "two")
    page.click("form[data-pipeline=greet] button[type=submit]")
    error = page.inner_text("form[data-pipeline=greet] .form-error")
    assert "name: required" in error
    assert "times: must be a whole number" in error


def test_a_failing_tasks_traceback_is_visible(page: Any) -> None:
    """The failed task's error, output and traceback show in its attempt."""
    start_from_pipelines_page(page, "broken")
    page.wait_for_selector(".run-header .badge.s-failed")
    page.click(".node[data-task=explode]")
    traceback = page.inner_text("#task-panel .traceback")
    assert "Traceback" in traceback
    assert "ValueError: bad row 3" in traceback
    assert "reading rows" in page.inner_text("#task-panel .output")


def test_cancel_a_running_run(page: Any) -> None:
    """Cancel on a running run's page ends it cancelled."""
    start_from_pipelines_page(page, "slow")
    page.wait_for_selector(".node.s-running[data-task=wait_long]")
    page.click("button.cancel")
    page.wait_for_selector(".run-header .badge.s-cancelled")


def test_resume_an_interrupted_run(page: Any, server: tuple[str, Path]) -> None:
    """An interrupted run left in the store shows Resume; clicking it runs it to success."""
    url, project = server
    plan = httpx.get(f"{url}/pipelines/resumable").json()["plan"]
    run_id = "left-interrupted"
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        store.create_run(
            RunRecord(
                run_id=run_id,
                dag_id=plan["dag_id"],
                pipeline="resumable",
                target=str(project / "pipeline.py"),
                selection={"tags": ["resumable"]},
                status=RunStatus.INTERRUPTED,
                plan=plan,
            )
        )
    finally:
        store.close()
    page.goto("/#/runs?pipeline=resumable&status=interrupted")
    page.click(f"tr[data-run={run_id}] button.resume")
    enter_token(page)
    (project / "release").touch()
    page.goto(f"/#/run/{run_id}")
    page.wait_for_selector(".run-header .badge.s-succeeded")


def test_retry_a_failed_run_from_its_page(page: Any, server: tuple[str, Path]) -> None:
    """A failed run's page offers "Retry from failure"; clicking it opens the new run, which
    succeeds reusing fetch (it ran once) and shows its parent and what it reused."""
    project = server[1]
    failed = start_from_pipelines_page(page, "flaky")
    page.wait_for_selector(".run-header .badge.s-failed")
    (project / "flaky-fixed").touch()
    page.click("button.retry")
    page.wait_for_url(lambda url: "#/run/" in url and not url.endswith(failed))
    page.wait_for_selector(".run-header .badge.s-succeeded")
    header = page.inner_text(".run-header")
    assert "retry of" in header
    assert f"fetch from {failed}" in page.inner_text(".run-header .reused")
    page.click(f".run-header a[href='#/run/{failed}'] >> nth=0")
    page.wait_for_selector(".run-header .badge.s-failed")
    assert (project / "fetched.log").read_text().split() == ["fetch"]
    page.goto("/#/runs?pipeline=flaky")
    page.wait_for_selector("tr[title], td.mono span[title^='retry of']")


def test_a_cron_runs_scheduled_time_shows_in_its_zone(page: Any, server: tuple[str, Path]) -> None:
    """A run recorded for the Berlin midnight of 29 March shows that time and zone in the
    runs list and on its page."""
    from datetime import UTC, datetime

    url, project = server
    plan = httpx.get(f"{url}/pipelines/greet").json()["plan"]
    store = SQLRunStore(path=project / ".dp" / "runs.db")
    try:
        store.create_run(
            RunRecord(
                run_id="berlin-midnight",
                dag_id=plan["dag_id"],
                pipeline="greet",
                status=RunStatus.SUCCEEDED,
                trigger="cron:greet.cron",
                plan=plan,
                scheduled_for=datetime(2026, 3, 28, 23, tzinfo=UTC),
                schedule_tz="Europe/Berlin",
            )
        )
    finally:
        store.close()
    page.goto("/#/runs?pipeline=greet")
    cell = page.inner_text("tr[data-run=berlin-midnight] td.scheduled")
    assert "00:00:00" in cell
    assert "29" in cell
    assert "Europe/Berlin" in cell
    page.goto("/#/run/berlin-midnight")
    fact = page.inner_text(".run-header .scheduled")
    assert "00:00:00" in fact
    assert "Europe/Berlin" in fact


def test_the_runs_filters(page: Any, server: tuple[str, Path]) -> None:
    """Filtering by pipeline and status lists only matching runs, with their count."""
    url = server[0]
    for _ in range(2):
        response = httpx.post(f"{url}/pipelines/broken/runs", json={}, headers=AUTH)
        assert response.status_code == 202
    page.goto("/#/runs")
    page.select_option("select[name=pipeline]", "broken")
    page.wait_for_url("**pipeline=broken**")
    # the re-rendered page fills its pipeline list asynchronously: pick the status after
    # it shows broken again, or the new URL would drop the pipeline
    playwright_api.expect(page.locator("select[name=pipeline]")).to_have_value("broken")
    page.select_option("select[name=status]", "failed")
    page.wait_for_url("**status=failed**")
    page.wait_for_selector(".runs tbody tr")
    expected = httpx.get(f"{url}/runs", params={"pipeline": "broken", "status": "failed"}).json()
    rows = page.query_selector_all(".runs tbody tr")
    assert len(rows) == expected["total"] >= 2
    assert {r.query_selector("td:nth-child(2)").inner_text() for r in rows} == {"broken"}
    assert f"of {expected['total']}" in page.inner_text(".pager .count")
    page.select_option("select[name=trigger]", "cron")
    page.wait_for_selector("text=No runs match.")


def test_html_in_task_output_renders_as_text(page: Any) -> None:
    """A task printing <script> and <img onerror> shows those characters and runs nothing."""
    start_from_pipelines_page(page, "html")
    page.wait_for_selector(".run-header .badge.s-succeeded")
    page.click(".node[data-task=html_output]")
    output = page.inner_text("#task-panel .output")
    assert "<script>window.__pwned = 1</script>" in output
    assert page.query_selector("#task-panel img") is None
    assert page.evaluate("window.__pwned") is None


def test_sources_show_their_circuit_error_and_cursor_as_text(page: Any) -> None:
    """The pipelines page lists the polling sources: an open circuit with its error, a
    cursor; HTML in either shows as characters and runs nothing."""
    page.goto("/")
    page.wait_for_selector("tr[data-source=html_inbox] .badge.s-open")
    page.wait_for_selector("tr[data-source=marker] .badge.s-closed")
    broken = page.inner_text("tr[data-source=html_inbox]")
    assert 'OSError: <img src=x onerror="window.__pwned = 2">' in broken
    assert "dashboard.inbox" in broken
    page.wait_for_function(
        "document.querySelector('tr[data-source=marker]').innerText.includes('seen')"
    )
    assert '{"seen":"<b>ok</b>"}' in page.inner_text("tr[data-source=marker]")
    assert page.query_selector("#sources img, #sources b") is None
    assert page.evaluate("window.__pwned") is None


def test_the_token_dialog_closes_on_escape_and_the_action_is_not_taken(page: Any) -> None:
    """Escape is Cancel: the dialog closes, nothing starts, and the Start button works again."""
    page.goto("/")
    page.click("form[data-pipeline=broken] button[type=submit]")
    page.wait_for_selector("#token-dialog[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#token-dialog:not([open])", state="attached")
    assert "#/run/" not in page.url
    page.click("#token-button")
    page.wait_for_selector("#token-dialog[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#token-dialog:not([open])", state="attached")
