"""Server hooks: the ASGI lifespan runs start and stop; the contracts with daphne, Twisted and uvicorn they rely on.

The contract tests fail when an upgrade changes what a reach into another library's private
parts (sessions_app.compat) relies on. The hooks' behaviour on real servers is tested in
test_deployment.py and test_lifecycle_live.py.
"""

import asyncio
import inspect
import logging
import signal
import sys

import pytest
from daphne.cli import CommandLineInterface
from daphne.server import Server as DaphneServer
from twisted.internet import asyncioreactor
from uvicorn import Config
from uvicorn.server import Server as UvicornServer

from sessions_app import compat
from sessions_app.connections import CLOSE_HANDSHAKE_SECONDS
from sessions_app.models import ServerInstance
from sessions_app.process import process_state
from wssproject.asgi import application

from .polling import wait_until


def test_daphne_installs_the_asyncio_reactor_as_twisted_internet_reactor():
    # Importing daphne.server (the `daphne` app does, in this process too) installs it.
    reactor = sys.modules.get("twisted.internet.reactor")
    assert isinstance(reactor, asyncioreactor.AsyncioSelectorReactor)
    assert compat.daphne_reactor() is reactor
    assert callable(reactor.callWhenRunning) and callable(reactor.addSystemEventTrigger)


def test_no_reactor_in_sys_modules_means_no_daphne(monkeypatch):
    monkeypatch.delitem(sys.modules, "twisted.internet.reactor")
    assert compat.daphne_reactor() is None


def test_another_reactor_is_not_daphnes(monkeypatch):
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", object())
    assert compat.daphne_reactor() is None


def test_daphne_imports_the_application_before_it_runs_the_reactor_and_adds_its_shutdown_trigger():
    # Our "before shutdown" trigger runs first only because daphne adds its own in run(),
    # after the ASGI module (which installs ours) was imported.
    cli = inspect.getsource(CommandLineInterface.run)
    assert 0 <= cli.index("load_asgi_app(") < cli.index("self.server.run()")
    run = inspect.getsource(DaphneServer.run)
    assert 'addSystemEventTrigger("before", "shutdown", self.kill_all_applications)' in run
    assert run.index("addSystemEventTrigger") < run.index("reactor.run(")


def test_uvicorns_signal_handlers_are_recognised_while_it_serves():
    server = UvicornServer(Config(app=lambda scope, receive, send: None))
    with server.capture_signals():
        for signum in (signal.SIGINT, signal.SIGTERM):
            assert compat.uvicorn_signal_handler(signal.getsignal(signum))


def test_uvicorn_captures_signals_before_the_lifespan_starts():
    # uvicorn_signals_chain runs at lifespan startup and finds uvicorn's handlers already installed.
    serve = inspect.getsource(UvicornServer.serve)
    assert serve.index("capture_signals()") < serve.index("_serve(")
    assert "await self.startup(" in inspect.getsource(UvicornServer._serve)


@pytest.mark.parametrize("handler", [signal.SIG_DFL, signal.SIG_IGN, signal.default_int_handler, print, None])
def test_other_signal_handlers_are_not_uvicorns(handler):
    assert not compat.uvicorn_signal_handler(handler)


# --- What the project's ASGI module sets on daphne (imported above, under daphne's reactor) ------


def test_daphnes_websocket_factories_get_the_projects_close_handshake_timeout():
    from daphne.ws_protocol import WebSocketFactory

    assert WebSocketFactory(server_class=None).closeHandshakeTimeout == CLOSE_HANDSHAKE_SECONDS


def test_daphnes_shutdown_trigger_skips_connections_whose_application_has_ended():
    assert getattr(DaphneServer.kill_all_applications, "skips_ended_applications", False)


def test_twisteds_warnings_and_errors_reach_the_twisted_logger_and_its_info_does_not(caplog):
    from twisted.logger import Logger
    from twisted.python.failure import Failure

    log = Logger(namespace="autobahn.websocket.protocol")
    with caplog.at_level(logging.INFO, logger="twisted"):
        log.info("an info line {n}", n=1)
        log.warn("dropping connection to peer {peer}", peer="tcp4:127.0.0.1:5")
        log.failure("while handling a frame", failure=Failure(ZeroDivisionError("division by zero")))
    records = [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records if r.name == "twisted"]
    assert records == [
        (logging.WARNING, "dropping connection to peer tcp4:127.0.0.1:5", False),
        (logging.CRITICAL, "while handling a frame", True),
    ]


# --- The ASGI lifespan (lifespan_app), through the project's application -----------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("fresh_process")
async def test_lifespan_starts_on_startup_and_retires_on_shutdown():
    received: list[dict] = []
    inbox: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(
        application({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, lambda m: _append(received, m))
    )
    await inbox.put({"type": "lifespan.startup"})

    await wait_until(lambda: received == [{"type": "lifespan.startup.complete"}], 10, what="lifespan startup")
    assert await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()
    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(task, timeout=10)
    assert received[-1] == {"type": "lifespan.shutdown.complete"}
    assert not await ServerInstance.objects.filter(pk=process_state().identity.boot_id).aexists()


async def _append(received: list[dict], message: dict) -> None:
    received.append(message)
