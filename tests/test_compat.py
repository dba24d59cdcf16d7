"""Contracts with other libraries' private parts (sessions_app/compat.py): each fails when an upgrade changes one."""

import asyncio
import inspect
import re
from pathlib import Path

import channels.consumer
import channels.exceptions
import channels_redis.core
import pytest
import redis.asyncio
from channels.consumer import get_handler_name
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer
from django.core import checks

from sessions_app import compat
from sessions_app.layers import RedisChannelLayer

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


def test_autobahn_formats_its_configuration_dump_with_the_modules_pformat_for_a_debug_line():
    from autobahn.websocket import protocol

    assert "from pprint import pformat" in inspect.getsource(protocol)
    made = inspect.getsource(protocol.WebSocketProtocol._connectionMade)
    assert re.findall(r"\S*\bpformat\(\w+\)", made) == ["attrs=pformat(configAttrLog)"]
    assert 'self.log.debug("\\n{attrs}", attrs=pformat(configAttrLog))' in made


def test_the_deferred_configuration_dump_formats_only_when_written_and_the_same(monkeypatch):
    import pprint

    from autobahn.websocket import protocol

    monkeypatch.setattr(protocol, "pformat", pprint.pformat)
    assert compat.autobahn_config_dump_deferred()
    formatted = []
    monkeypatch.setattr(compat.pprint, "pformat", lambda value: formatted.append(value) or repr(value))
    attrs = [("openHandshakeTimeout", 5, "WebSocketServerFactory")]

    class Connection:
        log_line = ""

        def _connectionMade(self):  # stands in for autobahn's, whose code the replacement recognises
            self.dump = protocol.pformat(attrs)

    monkeypatch.setattr(protocol.pformat, "deferred_in", Connection._connectionMade.__code__, raising=False)
    assert protocol.pformat(attrs) == repr(attrs) and formatted == [attrs]  # any other caller: a str, at once
    formatted.clear()
    connection = Connection()
    connection._connectionMade()
    assert formatted == []
    assert f"\n{connection.dump}" == "\n" + repr(attrs)  # formatted as the debug line is written
    assert formatted == [attrs]
    assert compat.autobahn_config_dump_deferred()  # once is enough: a second call changes nothing


def test_a_daphne_connection_no_longer_formats_its_configuration(monkeypatch):
    import pprint

    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from autobahn.websocket import protocol
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import StringTransport

    def connection_made() -> list:
        formatted = []
        monkeypatch.setattr(compat.pprint, "pformat", lambda value: formatted.append(value) or "")
        factory = WebSocketServerFactory()
        factory.protocol = WebSocketServerProtocol  # daphne's server protocol derives from it
        connection = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8000))
        connection.makeConnection(StringTransport())
        monkeypatch.setattr(compat.pprint, "pformat", pprint.pformat)
        return formatted

    monkeypatch.setattr(protocol, "pformat", lambda value: compat.pprint.pformat(value))  # as shipped, observable
    assert len(connection_made()) == 1
    monkeypatch.setattr(protocol, "pformat", pprint.pformat)
    assert compat.autobahn_config_dump_deferred()
    assert connection_made() == []
