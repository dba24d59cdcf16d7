"""wssproject/settings.py: each variable the README documents reaches the part it configures.

Settings are read once, at start, from the environment: each case runs a fresh Python
process with the variable set and reads the value back from the real part (PostgreSQL's
session, the socket under the connection, the keys Redis holds, Django's CSRF check).
"""

import json
import subprocess
import sys
import textwrap

import pytest

from .servers import ROOT, bare_environment, suite_database_url

pytestmark = pytest.mark.django_db(transaction=True)


def probe(code: str, **env: str) -> dict:
    """Run `code` in a fresh process whose Django is set up from `env`; the JSON it prints."""
    script = "import json, django\ndjango.setup()\n" + textwrap.dedent(code)
    environment = bare_environment(
        DJANGO_SETTINGS_MODULE="wssproject.settings", DATABASE_URL=suite_database_url(), **env
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# What the process's own registry connection runs with: PostgreSQL's view of the session
# (SHOW), the kernel's view of the socket under it (getsockopt on libpq's descriptor), and
# whether a request's end keeps the connection (the same backend pid afterwards).
POSTGRES_PROBE = """
    import socket
    from django.db import close_old_connections, connection

    def backend() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        statement_timeout = cursor.fetchone()[0]
        cursor.execute("SHOW lock_timeout")
        lock_timeout = cursor.fetchone()[0]
    first = backend()
    sock = socket.fromfd(connection.connection.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    tcp = {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }
    sock.close()
    close_old_connections()  # what Django does when a request ends
    print(json.dumps({
        "statement_timeout": statement_timeout,
        "lock_timeout": lock_timeout,
        "tcp": tcp,
        "kept": backend() == first,
    }))
"""


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {},
            {
                "statement_timeout": "5s",
                "lock_timeout": "2s",
                "tcp": {"keepalive": 1, "idle": 10, "interval": 5, "count": 3, "user_timeout_ms": 30000},
                "kept": True,
            },
        ),
        (
            {
                "DATABASE_STATEMENT_TIMEOUT": "7",
                "DATABASE_LOCK_TIMEOUT": "0.5",
                "DATABASE_KEEPALIVES_IDLE": "11",
                "DATABASE_KEEPALIVES_INTERVAL": "6",
                "DATABASE_KEEPALIVES_COUNT": "4",
                "DATABASE_TCP_USER_TIMEOUT": "31",
                "DATABASE_CONN_MAX_AGE": "0",
            },
            {
                "statement_timeout": "7s",
                "lock_timeout": "500ms",
                "tcp": {"keepalive": 1, "idle": 11, "interval": 6, "count": 4, "user_timeout_ms": 31000},
                "kept": False,
            },
        ),
    ],
    ids=["defaults", "each-set"],
)
def test_the_postgresql_settings_reach_the_processs_own_connection(env, expected):
    assert probe(POSTGRES_PROBE, **env) == expected


REDIS_PROBE = """
    import os
    import redis
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    async_to_sync(get_channel_layer().send)("settings-probe", {"type": "probe"})
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    keys = sorted(key.decode() for key in client.scan_iter(match="*settings-probe*"))
    client.delete(*keys)
    print(json.dumps(keys))
"""


@pytest.mark.production
@pytest.mark.usefixtures("production_services")
def test_wss_redis_prefix_prefixes_every_key_the_layer_writes(settings):
    keys = probe(REDIS_PROBE, REDIS_URL=settings.REDIS_URL, WSS_REDIS_PREFIX="settings-prefix")
    assert keys and all(key.startswith("settings-prefix") for key in keys), keys


CSRF_PROBE = """
    from django.test import Client

    client = Client(enforce_csrf_checks=True, HTTP_HOST="127.0.0.1")
    token = client.get("/admin/login/").cookies["csrftoken"].value
    response = client.post(
        "/admin/login/",
        {"csrfmiddlewaretoken": token, "username": "nobody", "password": "wrong", "next": "/admin/"},
        HTTP_ORIGIN="https://admin.example.com",
    )
    print(json.dumps(response.status_code))
"""


@pytest.mark.parametrize(
    ("trusted", "status"),
    [("", 403), ("https://admin.example.com", 200)],
    ids=["untrusted-origin-refused", "trusted-origin-served"],
)
def test_django_csrf_trusted_origins_admits_an_admin_post_from_the_proxys_origin(trusted, status):
    # A proxy serving the admin as https://admin.example.com forwards the browser's Origin; the
    # login form is answered (200, the credentials refused) only when that origin is trusted.
    assert probe(CSRF_PROBE, DJANGO_CSRF_TRUSTED_ORIGINS=trusted) == status
