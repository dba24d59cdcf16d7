"""Contracts with other libraries' private parts (sessions_app/compat.py): each fails when an upgrade changes one."""

import ast
import asyncio
import contextlib
import inspect
import json
import re
from pathlib import Path

import channels.consumer
import channels.exceptions
import channels_redis.core
import pytest
import redis.asyncio
import websockets
from channels.consumer import get_handler_name
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from django.core import checks

from sessions_app import compat
from sessions_app.layers import RedisChannelLayer

from . import close_race_app
from .servers import free_port

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def test_the_checked_versions_are_the_pins_of_requirements_txt():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)", REQUIREMENTS.read_text(), re.MULTILINE))
    assert {name: pins.get(name) for name in compat.CHECKED_VERSIONS} == compat.CHECKED_VERSIONS


def test_the_version_check_is_silent_at_the_checked_versions_and_warns_on_any_other(monkeypatch):
    assert [m for m in checks.run_checks(tags=["wss"]) if m.id == "wss.W030"] == []
    monkeypatch.setitem(compat.CHECKED_VERSIONS, "channels-redis", "0.0.1")
    [warning] = [m for m in checks.run_checks(tags=["wss"]) if m.id == "wss.W030"]
    assert warning.level == checks.WARNING
    assert "channels-redis 4.3.0 is installed" in warning.msg and "channels-redis 0.0.1" in warning.msg


async def test_channels_in_memory_layer_walks_its_expiry_on_receive_and_group_send():
    walks = []

    class Counting(ChannelsInMemoryChannelLayer):
        def _clean_expired(self):
            walks.append(1)
            super()._clean_expired()

    layer = Counting()
    await layer.group_add("g", "c!1")
    await layer.send("c!1", {"type": "x"})
    assert await layer.receive("c!1") == {"type": "x"}
    await layer.group_send("g", {"type": "y"})
    assert len(walks) == 2  # the mixin throttles what these two calls do


async def test_channels_in_memory_expiry_walk_removes_expired_messages():
    layer = ChannelsInMemoryChannelLayer(expiry=0.01)
    await layer.send("c!1", {"type": "x"})
    await asyncio.sleep(0.05)
    layer._clean_expired()
    assert layer.channels == {}


def test_channels_redis_runs_the_receive_backup_cleanup_as_a_coroutine_of_index_and_channel():
    method = channels_redis.core.RedisChannelLayer._clean_receive_backup
    assert inspect.iscoroutinefunction(method)
    assert list(inspect.signature(method).parameters) == ["self", "index", "channel"]
    assert "self._clean_receive_backup(index, channel_key)" in inspect.getsource(
        channels_redis.core.RedisChannelLayer.receive_single
    )


@pytest.mark.parametrize("path", sorted(compat.CONSUMER_SOURCES_CHECKED))
def test_the_channels_methods_copied_without_the_connection_hop_are_unchanged_upstream(path):
    module_name, class_name, method_name = path.rsplit(".", 2)
    method = getattr(getattr(__import__(module_name, fromlist=[class_name]), class_name), method_name)
    assert compat.source_digest(method) == compat.CONSUMER_SOURCES_CHECKED[path], (
        f"{path} changed upstream: compare it with compat.WithoutConnectionHop, then update the digest"
    )


def test_channels_names_handlers_and_stops_consumers_as_the_copies_expect():
    assert get_handler_name({"type": "websocket.disconnect"}) == "websocket_disconnect"
    assert channels.consumer.StopConsumer is channels.exceptions.StopConsumer
    assert "except StopConsumer:" in inspect.getsource(channels.consumer.AsyncConsumer.__call__)


# --- redis-py: a cancellation that asyncio.wait_for drops ---


async def test_wait_for_still_drops_a_cancellation_that_arrives_as_its_work_completes():
    """CPython gh-86296. When this fails (Python 3.12 fixed it), the redis-py section of compat can go."""

    async def write() -> str:
        return "written"

    async def command() -> str:
        return await asyncio.wait_for(write(), 10)

    task = asyncio.ensure_future(command())
    await asyncio.sleep(0)  # the command starts the write
    await asyncio.sleep(0)  # the write completes; wait_for has not woken up yet
    task.cancel()
    assert await task == "written"
    assert task.cancelling() == 1  # the task still says it was cancelled: what compat detects


@pytest.mark.parametrize(
    ("url", "connection_class"),
    [("redis://127.0.0.1:1/0", redis.asyncio.Connection), ("rediss://127.0.0.1:1/0", redis.asyncio.SSLConnection)],
)
def test_the_redis_layer_connects_with_the_cancellation_kept_whatever_the_scheme(url, connection_class):
    pool = RedisChannelLayer(hosts=[url]).create_pool(0)
    connection = pool.make_connection()  # what the pool hands out; nothing connects yet
    assert isinstance(connection, connection_class)
    assert isinstance(connection, compat._CancellationKept)


@pytest.mark.production
async def test_redis_py_writes_each_command_through_send_packed_command(production_services, settings, monkeypatch):
    """The one method compat overrides must be on the path of every command channels-redis sends."""
    written = []
    kept = compat._CancellationKept.send_packed_command

    async def counted(self, command, check_health: bool = True) -> None:
        written.append(command)
        await kept(self, command, check_health)

    monkeypatch.setattr(compat._CancellationKept, "send_packed_command", counted)
    config = settings.CHANNEL_LAYERS["default"]["CONFIG"]
    layer = RedisChannelLayer(**{**config, "prefix": f"test-compat-{free_port()}"})
    try:
        channel = await layer.new_channel()
        await layer.send(channel, {"type": "hello"})
        before = len(written)
        assert await layer.receive(channel) == {"type": "hello"}
        assert len(written) > before
    finally:
        await layer.flush()


def autobahn_calls(source: str, name: str) -> list[tuple[ast.Call, ast.AST, ast.AST | None]]:
    """Every call of `name` in `source`, with the node that holds it and the one that holds that."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    return [
        (node, parents[node], parents.get(parents[node]))
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
    ]


LOG_CALLS = {f"self.log.{level}" for level in ("trace", "debug", "info", "warn", "error", "failure", "critical")}


def test_autobahn_passes_hltype_and_hlval_only_to_its_log_calls_and_pformat_once_per_connection():
    from autobahn.websocket import protocol

    source = inspect.getsource(protocol)
    assert "from pprint import pformat" in source
    assert re.search(r"from autobahn\.util import \([^)]*\bhltype,[^)]*\bhlval,", source)
    for name in ("hltype", "hlval"):
        calls = autobahn_calls(source, name)
        assert calls, name
        for call, holder, log_call in calls:
            assert isinstance(holder, ast.keyword) and isinstance(log_call, ast.Call), ast.unparse(holder)
            assert ast.unparse(log_call.func) in LOG_CALLS, ast.unparse(log_call)
            assert len(call.args) == 1 and not call.keywords, ast.unparse(call)
    made = inspect.getsource(protocol.WebSocketProtocol._connectionMade)
    assert re.findall(r"\S*\bpformat\(\w+\)", made) == ["attrs=pformat(configAttrLog)"]
    assert 'self.log.debug("\\n{attrs}", attrs=pformat(configAttrLog))' in made


@pytest.fixture
def autobahn_as_shipped(monkeypatch):
    """autobahn's protocol module with its own formatting functions, whatever a test did before."""
    import pprint

    from autobahn import util
    from autobahn.websocket import protocol

    for name, original in (("pformat", pprint.pformat), ("hltype", util.hltype), ("hlval", util.hlval)):
        monkeypatch.setattr(protocol, name, original)
    return protocol


def test_deferred_debug_values_format_only_when_written_and_the_same(autobahn_as_shipped, monkeypatch):
    from autobahn import util

    protocol = autobahn_as_shipped
    assert compat.autobahn_debug_formatting_deferred()
    for name in ("hltype", "hlval"):
        calls = []
        original = getattr(util, name)
        monkeypatch.setattr(
            util, name, lambda value, original=original, calls=calls: calls.append(value) or original(value)
        )
        value = getattr(protocol, name)(protocol.WebSocketProtocol.sendData)
        assert calls == []
        assert f"{value}" == original(protocol.WebSocketProtocol.sendData)  # as the log line formats it
        assert len(calls) == 1
    assert protocol.pformat([1]) == "[1]"  # a caller other than _connectionMade gets its str at once
    assert compat.autobahn_debug_formatting_deferred()  # once is enough: a second call changes nothing


def test_a_daphne_connection_no_longer_formats_its_debug_lines(autobahn_as_shipped, monkeypatch):
    import pprint

    from autobahn import util
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet.address import IPv4Address
    from twisted.internet.error import ConnectionDone
    from twisted.internet.testing import StringTransport
    from twisted.python.failure import Failure

    formatted = []

    def counted(name, original):
        return lambda value, *args, **kwargs: formatted.append(name) or original(value, *args, **kwargs)

    monkeypatch.setattr(compat.pprint, "pformat", counted("pformat", pprint.pformat))
    monkeypatch.setattr(util, "hltype", counted("hltype", util.hltype))
    monkeypatch.setattr(util, "hlval", counted("hlval", util.hlval))

    def a_connection_opens_and_is_lost() -> list[str]:
        formatted.clear()
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol  # daphne's server protocol derives from it
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
        connection.makeConnection(StringTransport())
        connection.connectionLost(Failure(ConnectionDone()))
        return sorted(set(formatted))

    for name in ("pformat", "hltype", "hlval"):  # as shipped, through the counters: formatted at once
        monkeypatch.setattr(autobahn_as_shipped, name, lambda value, n=name: formatted.append(n) or "")
    assert a_connection_opens_and_is_lost() == ["hltype", "hlval", "pformat"]
    monkeypatch.setattr(autobahn_as_shipped, "pformat", compat.pprint.pformat)
    monkeypatch.setattr(autobahn_as_shipped, "hltype", util.hltype)
    monkeypatch.setattr(autobahn_as_shipped, "hlval", util.hlval)
    assert compat.autobahn_debug_formatting_deferred()
    assert a_connection_opens_and_is_lost() == []


def test_txaio_batched_timer_still_rounds_a_delay_down_to_the_whole_second():
    from txaio._common import _BatchedTimer

    scheduled = []
    timer = _BatchedTimer(
        200.0, 1000, seconds_provider=lambda: 100.9, delayed_call_creator=lambda delay, *_: scheduled.append(delay)
    )
    timer.call_later(1.0, lambda: None)
    assert scheduled == [pytest.approx(0.1)]  # a second asked for, a tenth given: the reason for the override


def test_daphnes_websocket_factory_gets_the_close_handshake_timeout_and_keeps_its_other_options(monkeypatch):
    from autobahn.twisted.websocket import WebSocketServerFactory
    from daphne.ws_protocol import WebSocketFactory

    # autobahn's own method, whether or not the project's ASGI module was imported in this process.
    monkeypatch.setattr(WebSocketFactory, "resetProtocolOptions", WebSocketServerFactory.resetProtocolOptions)
    as_shipped = WebSocketFactory(server_class=None)
    assert as_shipped.closeHandshakeTimeout == 1
    assert compat.daphne_close_handshake_timeout(2.0)
    assert compat.daphne_close_handshake_timeout(3.0)  # a second call sets the value, without wrapping again
    factory = WebSocketFactory(server_class=None)
    assert factory.closeHandshakeTimeout == 3.0

    def other_options(factory) -> dict:
        options = {name: value for name, value in vars(factory).items() if not name.startswith("_")}
        return {
            name: value for name, value in options.items() if not callable(value) and name != "closeHandshakeTimeout"
        }

    assert other_options(factory) == other_options(as_shipped)
    assert WebSocketFactory.resetProtocolOptions.__wrapped__ is WebSocketServerFactory.resetProtocolOptions


@pytest.mark.live
@pytest.mark.path_independent
@pytest.mark.parametrize(
    "with_project_timeout, expected",
    [(False, (None, 1006)), (True, (close_race_app.ERROR.code, close_race_app.ERROR.close_code))],
    ids=["autobahn-default", "project-timeout"],
)
async def test_a_close_sent_in_the_turn_its_timer_fires_reaches_the_client_only_with_the_project_timeout(
    server_factory, with_project_timeout, expected
):
    server = server_factory(
        application="tests.close_race_app:application", env={"WITH_PROJECT_TIMEOUT": str(int(with_project_timeout))}
    )

    async def one_connection() -> tuple[str | None, int]:
        async with websockets.connect(server.url) as ws:
            await ws.send("go")
            frames = []
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    frames.append(await asyncio.wait_for(ws.recv(), timeout=5))
            return (json.loads(frames[0])["code"] if frames else None), ws.close_code

    assert [await one_connection() for _ in range(3)] == [expected] * 3
    server.assert_no_traceback()


class FakeDaphneServer:
    """What `Server.kill_all_applications` reads of daphne's server: its connections."""

    def __init__(self, connections: dict) -> None:
        self.connections = connections


async def test_daphnes_shutdown_trigger_raises_on_a_connection_whose_application_has_ended():
    from daphne.server import Server

    shipped = getattr(Server.kill_all_applications, "__wrapped__", Server.kill_all_applications)
    running = asyncio.get_running_loop().create_future()
    server = FakeDaphneServer({"keep-alive": {"connected": 1.0}, "websocket": {"application_instance": running}})
    with pytest.raises(KeyError, match="application_instance"):
        shipped(server)
    assert not running.cancelled()  # the applications after the ended one are never cancelled


async def test_daphnes_shutdown_trigger_cancels_the_running_applications_past_an_ended_one(monkeypatch):
    from daphne.server import Server

    monkeypatch.setattr(
        Server,
        "kill_all_applications",
        getattr(Server.kill_all_applications, "__wrapped__", Server.kill_all_applications),
    )
    assert compat.daphne_kill_skips_ended_applications()
    assert compat.daphne_kill_skips_ended_applications()  # once is enough: a second call changes nothing
    running, ended = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    ended.set_result(None)
    connections = {
        "keep-alive": {"connected": 1.0},
        "websocket": {"application_instance": running},
        "closing": {"application_instance": ended},
    }
    server = FakeDaphneServer(connections)
    waited = Server.kill_all_applications(server)
    assert running.cancelled() and server.connections is connections and len(connections) == 3
    results = []
    waited.addBoth(results.append)
    await asyncio.sleep(0.01)
    assert results == [None]  # daphne's reactor waits for the cancelled ones to end
