"""The console page in a real browser: open a session, end it from the admin, see 4410.

Drives Debian's Chromium headless through Playwright against a real daphne; a screenshot
of every step goes to test-artifacts/browser/.
"""

import contextlib
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from sessions_app.models import LiveSession

from .servers import ROOT

# The pages' JavaScript does the same on either path; what the server does behind it runs on
# both, in test_admin_live.py, test_resume_live.py and test_deployment.py.
pytestmark = [pytest.mark.live, pytest.mark.path_independent]

ARTIFACTS = ROOT / "test-artifacts" / "browser"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
PASSWORD = "browser-test-password"


@pytest.fixture(scope="module")
def browser(browser_type_launch_args) -> Browser:
    """Chromium for this module only.

    Overrides pytest-playwright's session-wide browser: Playwright's sync API keeps an event
    loop running in the main thread while it lives, which would break every async test after it.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(**browser_type_launch_args)
        yield chromium
        chromium.close()


@pytest.fixture(autouse=True)
def orm_beside_playwright(monkeypatch) -> None:
    # Playwright's sync API runs an event loop in this thread, so Django would refuse the
    # test's own ORM calls; they are plain sync calls, safe here (pytest-django's advice).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@contextlib.contextmanager
def browser_tabs(browser: Browser, server, test_name: str) -> Iterator[BrowserContext]:
    """A fresh browser context on `server`; every tab is screenshotted when the test fails in it."""
    context = browser.new_context(base_url=server.http_url)
    context.set_default_timeout(15_000)
    try:
        yield context
    except Exception:
        for number, page in enumerate(context.pages):
            screenshot(page, f"failed-{test_name}-tab{number + 1}")
        raise
    finally:
        context.close()


def test_a_session_opened_on_the_page_is_listed_and_terminated_in_the_admin(
    daphne_server, workspace, django_user_model, browser: Browser, request
):
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    with browser_tabs(browser, daphne_server, request.node.name) as context:
        console = context.new_page()
        console.goto("/")
        expect(console.locator("#endpoint")).to_have_text(f"ws://127.0.0.1:{daphne_server.port}/ws")
        console.fill("#workspace", str(workspace))
        console.click("#open")
        expect(console.locator("#session-id")).to_have_text(UUID4)
        expect(console.locator("#state")).to_have_text("open")
        session_id = console.locator("#session-id").inner_text()
        assert LiveSession.objects.filter(pk=session_id).exists()
        screenshot(console, "1-console-session-open")

        admin = context.new_page()  # a second tab
        admin.goto("/admin/login/?next=/admin/sessions_app/livesession/")
        admin.fill("#id_username", "operator")
        admin.fill("#id_password", PASSWORD)
        admin.click("input[type=submit]")
        expect(admin.locator(f'#result_list span[title="{session_id}"]')).to_have_text(session_id[:8])
        screenshot(admin, "2-admin-lists-the-session")

        admin.check(f'input[name="_selected_action"][value="{session_id}"]')
        admin.select_option('select[name="action"]', "terminate_sessions")
        admin.click('button[name="index"]')
        expect(admin.locator("h1")).to_have_text("Terminate 1 live session?")
        admin.click('input[type="submit"][value="Yes, terminate"]')
        expect(admin.locator(".messagelist")).to_contain_text(
            f"Session {session_id}: terminate delivered: its server closes it."
        )
        screenshot(admin, "3-admin-terminated-it")

        console.bring_to_front()
        expect(console.locator("#close-code")).to_have_text("4410")
        expect(console.locator("#log")).to_contain_text("session_terminated: An operator terminated this session.")
        expect(console.locator("#state")).to_have_text("closed")
        screenshot(console, "4-console-reports-4410")
        assert not LiveSession.objects.filter(pk=session_id).exists()


def test_the_console_shows_errors_and_a_clean_close(daphne_server, workspace, browser: Browser, request):
    with browser_tabs(browser, daphne_server, request.node.name) as context:
        console = context.new_page()
        console.goto("/")
        console.fill("#workspace", str(workspace / "missing"))
        console.click("#open")
        expect(console.locator("#log")).to_contain_text("workspace_not_found")
        expect(console.locator("#state")).to_have_text("open")  # the error leaves the socket open
        console.fill("#workspace", str(workspace))
        console.click("#open")
        expect(console.locator("#session-id")).to_have_text(UUID4)
        console.click("#close")
        expect(console.locator("#close-code")).to_have_text("1000")
        screenshot(console, "5-console-error-then-clean-close")


def open_resumable_session(context: BrowserContext, workspace) -> tuple[Page, str]:
    """A console tab that opened a resumable session on `workspace`; the page and the session id."""
    console = context.new_page()
    console.goto("/")
    console.fill("#workspace", str(workspace))
    console.check("#resumable")
    console.click("#open")
    expect(console.locator("#session-id")).to_have_text(UUID4)
    return console, console.locator("#session-id").inner_text()


def test_the_console_resumes_a_resumable_session_after_a_drop_and_a_reload(
    daphne_server, workspace, browser: Browser, request
):
    with browser_tabs(browser, daphne_server, request.node.name) as context:
        console, session_id = open_resumable_session(context, workspace)
        expect(console.locator("#resumable-state")).to_have_text("yes (grace 30 s)")
        channel = LiveSession.objects.get(pk=session_id).channel_name

        console.evaluate("socket.close(4000)")  # not 1000: the server detaches, the page resumes
        expect(console.locator("#resumes")).to_have_text("1")
        expect(console.locator("#session-id")).to_have_text(session_id)
        expect(console.locator("#state")).to_have_text("open")
        screenshot(console, "6-console-resumed-after-a-drop")
        row = LiveSession.objects.get(pk=session_id)
        assert row.detached_at is None and row.channel_name != channel

        console.reload()  # 1001 going away: detached; the new page resumes from sessionStorage
        expect(console.locator("#log")).to_contain_text('"type":"session_resumed"')
        expect(console.locator("#session-id")).to_have_text(session_id)
        token = console.evaluate("JSON.parse(sessionStorage.getItem('wss-sessions.resume')).resume_token")
        assert len(token) >= 43 and token not in console.locator("#log").inner_text()  # the log hides it

        console.click("#end")
        expect(console.locator("#session-id")).to_have_text("none (ended)")
        expect(console.locator("#state")).to_have_text("open")
        assert not LiveSession.objects.filter(pk=session_id).exists()
        screenshot(console, "7-console-ended-the-session")


def test_a_resumable_session_closed_from_the_console_ends(daphne_server, workspace, browser: Browser, request):
    with browser_tabs(browser, daphne_server, request.node.name) as context:
        console, session_id = open_resumable_session(context, workspace)
        console.click("#close")
        expect(console.locator("#close-code")).to_have_text("1000")
        expect(console.locator("#state")).to_have_text("closed")
        assert not LiveSession.objects.filter(pk=session_id).exists()


def test_the_console_lists_events_with_their_seq_and_resumes_with_last_seq(
    daphne_server, workspace, browser: Browser, request, sender_token
):
    from .servers import post_event_sync

    with browser_tabs(browser, daphne_server, request.node.name) as context:
        console, session_id = open_resumable_session(context, workspace)
        for text in ("first", "second"):
            assert post_event_sync(daphne_server, sender_token, session_id, {"event": "notice", "data": text})[0] == 202
        expect(console.locator("#events li")).to_have_count(2)
        expect(console.locator("#events li").nth(1)).to_contain_text('#2 notice "second"')
        expect(console.locator("#last-seq")).to_have_text("2")

        console.reload()  # detached; the new page resumes from sessionStorage with the seq it kept
        expect(console.locator("#log")).to_contain_text('"type":"session_resumed"')
        expect(console.locator("#log")).to_contain_text('"last_seq":2')
        expect(console.locator("#log")).to_contain_text('"replayed":0,"missed":false')
        assert post_event_sync(daphne_server, sender_token, session_id, {"event": "notice", "data": "third"})[0] == 202
        expect(console.locator("#events li")).to_have_count(1)  # a reloaded page starts its list afresh
        expect(console.locator("#events li").first).to_contain_text('#3 notice "third"')
        expect(console.locator("#last-seq")).to_have_text("3")
        screenshot(console, "8-console-events-after-a-reload")
