"""The live admin in a real browser, at 1280 x 800 and 1024 x 768: it fits, and it follows the registry.

Debian's Chromium through Playwright against a real daphne. Sessions are opened and
closed by a real client (websockets) while the page stays loaded; a screenshot of each
step at each size goes to test-artifacts/screenshots/.
"""

import contextlib
import json
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from .servers import ROOT
from .test_browser import PASSWORD, browser_tabs

# Fixtures: a Chromium for this module, and the ORM usable beside Playwright's loop.
from .test_browser import browser as browser
from .test_browser import orm_beside_playwright as orm_beside_playwright

# The pages' JavaScript does the same on either path; the live channel behind it runs on
# both, in test_admin_live.py, and across processes in test_admin_live_deployment.py.
pytestmark = [pytest.mark.live, pytest.mark.path_independent]

SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SIZES = {"1280x800": (1280, 800), "1024x768": (1024, 768)}
CHANGELIST = "/admin/sessions_app/livesession/"


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


class Client:
    """A real protocol client on the server: one connection holding one session."""

    def __init__(self, ws: ClientConnection, workspace, *, resumable: bool = False) -> None:
        self.ws = ws
        self.ws.send(json.dumps({"type": "new_session", "workspace_dir": str(workspace), "resumable": resumable}))
        reply = json.loads(self.ws.recv(timeout=15))
        assert reply["type"] == "new_session", reply
        self.session_id: str = reply["session_id"]

    def close(self, code: int = 1000) -> None:
        self.ws.close(code=code)


@pytest.fixture
def open_client(servers) -> Iterator:
    """Open a session on a server as a client would: open_client(url, workspace, resumable=False); closed at the end."""
    with contextlib.ExitStack() as stack:

        def open_one(url: str, workspace, *, resumable: bool = False) -> Client:
            return Client(stack.enter_context(ws_connect(url, open_timeout=15)), workspace, resumable=resumable)

        yield open_one


def log_in(page: Page, next_path: str) -> None:
    page.goto(f"/admin/login/?next={next_path}")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


def row(page: Page, session_id: str):
    return page.locator(f'#result_list tbody tr[data-pk="{session_id}"]')


def assert_no_horizontal_overflow(page: Page) -> None:
    """Neither the page nor the results table is wider than the window."""
    widths = page.evaluate(
        """() => {
            const table = document.getElementById('result_list');
            return {
                page: document.documentElement.scrollWidth,
                window: document.documentElement.clientWidth,
                tableRight: table ? table.getBoundingClientRect().right : 0,
                tableScroll: table ? table.parentElement.scrollWidth - table.parentElement.clientWidth : 0,
            };
        }"""
    )
    assert widths["page"] <= widths["window"], widths
    assert widths["tableRight"] <= widths["window"], widths
    assert widths["tableScroll"] <= 0, widths


@pytest.mark.parametrize("size", SIZES)
def test_the_changelist_and_the_index_follow_the_registry_and_fit(
    size, servers, workspace, open_client, django_user_model, browser: Browser, request
):
    # The default heartbeat (5 s): what moves the page within 2 s is the registry's nudge, not its own refresh.
    server = servers(WSS_HEARTBEAT_SECONDS="5", WSS_INSTANCE_TIMEOUT_SECONDS="25")
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    # A long workspace path, as real ones are: it must not widen the table.
    deep = workspace / "projects" / "a-rather-long-customer-name" / "repositories" / "service-with-a-long-name"
    deep.mkdir(parents=True)
    first = open_client(server.url, deep)
    resumable = open_client(server.url, workspace, resumable=True)
    width, height = SIZES[size]

    with browser_tabs(browser, server, request.node.name) as context:
        page = context.new_page()
        page.set_viewport_size({"width": width, "height": height})
        log_in(page, CHANGELIST)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(row(page, first.session_id)).to_be_visible()
        expect(row(page, first.session_id).locator(".field-short_id")).to_have_text(first.session_id[:8])
        expect(row(page, first.session_id).locator(".field-short_id span")).to_have_attribute("title", first.session_id)
        expect(row(page, first.session_id).locator(".live-badge")).to_have_text("attached")
        assert_no_horizontal_overflow(page)

        page.evaluate("window.loadedOnce = true")  # a reload would forget it
        page.check(f'input.action-select[value="{first.session_id}"]')
        opened = open_client(server.url, workspace)
        expect(row(page, opened.session_id)).to_be_visible(timeout=2_000)
        expect(page.locator(f'input.action-select[value="{first.session_id}"]')).to_be_checked()
        expect(page.locator("span.action-counter")).to_have_text("1 of 3 selected")
        assert page.evaluate("window.loadedOnce") is True
        assert_no_horizontal_overflow(page)
        screenshot(page, f"{size}-1-changelist-a-session-appeared")

        opened.close()
        expect(row(page, opened.session_id)).to_have_count(0, timeout=2_000)
        page.check(f'input.action-select[value="{resumable.session_id}"]')
        resumable.close(code=4000)  # not 1000: the server detaches it, awaiting a resume
        expect(row(page, resumable.session_id).locator(".live-badge")).to_contain_text("detached", timeout=2_000)
        expect(row(page, resumable.session_id).locator(".live-badge")).to_contain_text("left")
        # The row was replaced in place: its tick came with it, and the other one stayed.
        expect(page.locator(f'input.action-select[value="{resumable.session_id}"]')).to_be_checked()
        expect(page.locator(f'input.action-select[value="{first.session_id}"]')).to_be_checked()
        expect(page.locator("span.action-counter")).to_have_text("2 of 2 selected")
        assert page.evaluate("window.loadedOnce") is True
        assert_no_horizontal_overflow(page)
        screenshot(page, f"{size}-2-changelist-one-left-one-detached")

        page.goto("/admin/")
        expect(page.locator("#live-title")).to_contain_text("2 live sessions (1 detached)")
        assert_no_horizontal_overflow(page)
        screenshot(page, f"{size}-3-index")
        another = open_client(server.url, workspace)
        expect(page.locator("#live-title")).to_contain_text("3 live sessions (1 detached)", timeout=2_000)
        another.close()
        expect(page.locator("#live-title")).to_contain_text("2 live sessions (1 detached)", timeout=2_000)

        page.goto("/admin/sessions_app/serverinstance/")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(page.locator("#result_list .live-badge-alive")).to_have_count(1)
        assert_no_horizontal_overflow(page)
        screenshot(page, f"{size}-4-instances")


def test_a_dropped_live_channel_is_shown_and_the_page_catches_up_when_it_returns(
    servers, workspace, open_client, django_user_model, browser: Browser, request
):
    slow = {"WSS_HEARTBEAT_SECONDS": "5", "WSS_INSTANCE_TIMEOUT_SECONDS": "25"}
    server = servers(**slow)
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    with browser_tabs(browser, server, request.node.name) as context:
        page = context.new_page()
        page.set_viewport_size({"width": 1280, "height": 800})
        log_in(page, CHANGELIST)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        page.evaluate("window.loadedOnce = true")

        server.stop()  # the process dies: the page's socket drops
        expect(page.locator("#live-status")).to_have_attribute("data-state", "lost")
        expect(page.locator("#live-status")).to_contain_text("Live channel lost")
        screenshot(page, "1280x800-5-live-channel-lost")

        back = servers(port=server.port, **slow)  # the same address, a new process
        opened = open_client(back.url, workspace)  # while the page is still reconnecting, maybe
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live", timeout=15_000)
        expect(row(page, opened.session_id)).to_be_visible()  # caught up
        assert page.evaluate("window.loadedOnce") is True


def test_a_terminate_from_the_list_asks_first_then_the_session_leaves_the_list_and_filters_follow(
    servers, workspace, open_client, django_user_model, browser: Browser, request
):
    from django.utils import timezone

    from sessions_app.models import LiveSession, ServerInstance

    # The default heartbeat (5 s): what moves the page within 2 s is the registry's nudge.
    server = servers(WSS_HEARTBEAT_SECONDS="5", WSS_INSTANCE_TIMEOUT_SECONDS="25")
    django_user_model.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    deep = workspace / "projects" / "a-rather-long-customer-name" / "repositories" / "service-with-a-long-name"
    deep.mkdir(parents=True)
    doomed = open_client(server.url, deep)
    kept = open_client(server.url, workspace)

    with browser_tabs(browser, server, request.node.name) as context:
        page = context.new_page()
        page.set_viewport_size({"width": 1280, "height": 800})
        log_in(page, CHANGELIST)
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(row(page, doomed.session_id)).to_be_visible()
        instance_filter = page.locator('#changelist-filter details[data-filter-title="server instance"]')
        expect(instance_filter).not_to_contain_text("other-host:7")

        # Another server instance starts holding a session after the page loaded; the next
        # change on this server (a session opening) re-renders the page: its sidebar too.
        page.evaluate("window.loadedOnce = true")
        other = ServerInstance.objects.create(host="other-host", pid=7, heartbeat_at=timezone.now())
        LiveSession.objects.create(workspace_dir="/srv", channel_name="c", client_addr="127.0.0.1:1", instance=other)
        nudge = open_client(server.url, workspace)
        expect(instance_filter).to_contain_text("other-host:7", timeout=2_000)
        expect(row(page, nudge.session_id)).to_be_visible()
        assert page.evaluate("window.loadedOnce") is True  # no reload

        def ask() -> None:
            page.check(f'input.action-select[value="{doomed.session_id}"]')
            page.select_option('select[name="action"]', "terminate_sessions")
            page.click('button[name="index"]')
            expect(page.locator("h1")).to_have_text("Terminate 1 live session?")

        ask()
        expect(page.locator("td.live-selected-id")).to_have_text([doomed.session_id])
        expect(page.locator(".live-selected .live-badge")).to_have_text(["attached"])
        expect(page.locator('input[name="_selected_action"]')).to_have_count(1)
        assert LiveSession.objects.filter(pk=doomed.session_id).exists()  # nothing ended yet
        for size, (width, height) in SIZES.items():
            page.set_viewport_size({"width": width, "height": height})
            assert_no_horizontal_overflow(page)
            screenshot(page, f"{size}-6-terminate-confirmation")
        page.set_viewport_size({"width": 1280, "height": 800})

        page.click("text=No, take me back")
        expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
        expect(row(page, doomed.session_id)).to_be_visible()
        assert LiveSession.objects.filter(pk=doomed.session_id).exists()

        ask()
        page.click('input[type="submit"][value="Yes, terminate"]')
        expect(page.locator(".messagelist")).to_contain_text(
            f"Session {doomed.session_id}: terminate delivered: its server closes it."
        )
        expect(row(page, doomed.session_id)).to_have_count(0, timeout=2_000)
        expect(row(page, kept.session_id)).to_be_visible()
        screenshot(page, "1280x800-7-terminated-and-gone-from-the-list")
        assert json.loads(doomed.ws.recv(timeout=5))["code"] == "session_terminated"
