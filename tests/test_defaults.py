"""Safe defaults: no debug, no public signing key, no anonymous access from beyond loopback."""

import json
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator

from wssproject.secretkey import secret_key_load_or_create

from .servers import ROOT, bare_environment

pytestmark = pytest.mark.path_independent


def test_the_signing_key_is_generated_once_private_and_reused(tmp_path: Path):
    path = tmp_path / ".secret_key"
    key = secret_key_load_or_create(path)
    assert len(key) >= 50
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert secret_key_load_or_create(path) == key
    assert secret_key_load_or_create(tmp_path / "other") != key
    assert sorted(p.name for p in tmp_path.iterdir()) == [".secret_key", "other"]  # no temporary file left


def test_concurrent_first_starts_agree_on_one_key(tmp_path: Path):
    path = tmp_path / ".secret_key"
    keys: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        keys.append(secret_key_load_or_create(path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(keys) == 8
    assert len(set(keys)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [".secret_key"]  # no temporary file left


def test_an_empty_key_file_refuses_to_start(tmp_path: Path):
    path = tmp_path / ".secret_key"
    path.write_text("\n")
    with pytest.raises(RuntimeError, match="empty"):
        secret_key_load_or_create(path)


def test_no_environment_means_debug_off_and_a_generated_private_key(tmp_path: Path):
    key_file = tmp_path / "key"
    script = "import django; django.setup(); from django.conf import settings as s; print(s.DEBUG, s.SECRET_KEY)"
    env = bare_environment(DJANGO_SETTINGS_MODULE="wssproject.settings", DJANGO_SECRET_KEY_FILE=str(key_file))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    debug, key = result.stdout.split()
    assert debug == "False"
    assert key == key_file.read_text().strip()
    assert "insecure" not in key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


SETTINGS_SCRIPT = (
    "import django, json; django.setup(); from django.conf import settings as s;"
    " from sessions_app.conf import DEFAULTS;"
    " print(json.dumps({name: [getattr(s, name), type(getattr(s, name)).__name__] for name in DEFAULTS}))"
)


def test_each_wss_knob_takes_its_one_stated_default_and_parses_the_environment_as_that_type(tmp_path: Path):
    from sessions_app.conf import DEFAULTS

    def settings_under(**env: str) -> dict:
        environment = bare_environment(
            DJANGO_SETTINGS_MODULE="wssproject.settings", DJANGO_SECRET_KEY_FILE=str(tmp_path / "key"), **env
        )
        command = [sys.executable, "-c", SETTINGS_SCRIPT]
        run = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-2000:]
        return json.loads(run.stdout)

    assert settings_under() == {name: [value, type(value).__name__] for name, value in DEFAULTS.items()}
    changed = settings_under(WSS_RATE_LIMIT_BURST="7", WSS_HEARTBEAT_SECONDS="1.5", WSS_REQUIRE_AUTH="yes")
    assert changed["WSS_RATE_LIMIT_BURST"] == [7, "int"]
    assert changed["WSS_HEARTBEAT_SECONDS"] == [1.5, "float"]
    assert changed["WSS_REQUIRE_AUTH"] == [True, "bool"]


def test_the_key_file_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".secret_key"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0


def check_deploy(**env: str) -> str:
    """The output of `manage.py check --deploy` under `env` (and nothing else of ours)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=bare_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.stdout + result.stderr


def test_check_deploy_with_the_documented_production_environment_leaves_only_the_justified_warnings(tmp_path):
    output = check_deploy(
        DJANGO_SECRET_KEY="x" * 20 + "a-long-random-production-key-0123456789",
        DJANGO_ALLOWED_HOSTS="sessions.example.com",
        DJANGO_HTTPS="true",
        WSS_REQUIRE_AUTH="true",
        WSS_WORKSPACE_ROOTS=str(tmp_path),
    )
    found = sorted(set(line.split("(")[1].split(")")[0] for line in output.splitlines() if line.startswith("?: (")))
    # Both justified in docs/security.md: HTTPS redirect and HSTS belong to the TLS proxy.
    assert found == ["security.W004", "security.W008"], output


def test_check_deploy_warns_when_neither_roots_nor_authentication_are_set():
    output = check_deploy(DJANGO_SECRET_KEY="x" * 60, DJANGO_HTTPS="true")
    assert "wss.W020" in output


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("client", "settings_change", "accepted"),
    [
        (("203.0.113.7", 5000), {}, False),
        (("192.168.1.20", 5000), {}, False),
        (("127.0.0.1", 5000), {}, True),
        (("::1", 5000), {}, True),
        (("203.0.113.7", 5000), {"WSS_WORKSPACE_ROOTS": ["/tmp"]}, True),
        (("203.0.113.7", 5000), {"WSS_REQUIRE_AUTH": True}, False),
    ],
    ids=["remote", "lan", "loopback", "loopback-v6", "remote-with-roots", "remote-auth-required-no-token"],
)
async def test_an_unrestricted_server_serves_anonymous_clients_on_loopback_only(
    settings, client, settings_change, accepted
):
    from wssproject.asgi import application

    for name, value in settings_change.items():
        setattr(settings, name, value)
    comm = WebsocketCommunicator(application, "/ws")
    comm.scope["client"] = client
    connected, _ = await comm.connect()
    assert connected is accepted
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_a_remote_client_with_a_token_is_served_by_an_unrestricted_server(django_user_model):
    from asgiref.sync import sync_to_async

    from sessions_app.tokens import token_create
    from wssproject.asgi import application

    user = await sync_to_async(django_user_model.objects.create_user)("remote", password="pw")
    _, raw = await sync_to_async(token_create)(user=user, name="t")
    comm = WebsocketCommunicator(application, "/ws", headers=[(b"authorization", f"Bearer {raw}".encode())])
    comm.scope["client"] = ("203.0.113.7", 5000)
    assert (await comm.connect())[0]
    await comm.disconnect()


@pytest.mark.live
def test_daphne_with_no_settings_serves_no_debug_page_but_the_admin_css(server_factory):
    # DJANGO_DEBUG="" is unset for env_bool; the database is the test's.
    server = server_factory(env={"DJANGO_DEBUG": "", "DJANGO_SECRET_KEY": ""})
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{server.http_url}/no-such-page", timeout=10)
    assert missing.value.code == 404
    assert b"URLconf" not in missing.value.read()  # Django's debug 404 lists the URL patterns
    with urllib.request.urlopen(f"{server.http_url}/static/admin/css/base.css", timeout=10) as css:
        assert css.status == 200
        assert css.headers["Content-Type"].startswith("text/css")
        assert b"body" in css.read()
