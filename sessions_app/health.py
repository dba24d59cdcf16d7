"""Health endpoints: /healthz (the process answers) and /readyz (its dependencies answer).

/readyz checks the registry with a query and the channel layer with a round trip through
a fresh channel, each bounded by WSS_READYZ_TIMEOUT_SECONDS; any failure is a 503 naming it.
The public answer says only ok or failed per check: an exception's text names hosts, ports
and users. The detail goes to the log, and into the answer for the callers /metrics serves
(WSS_METRICS_ALLOWED_IPS, loopback by default, or the WSS_METRICS_TOKEN bearer token).
"""

import asyncio
import logging
import uuid

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .conf import app_settings
from .views import metrics_allowed

logger = logging.getLogger(__name__)


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Alive: the process serves HTTP. Touches no dependency."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Ready: the database and the channel layer both answer in time."""
    timeout = app_settings.WSS_READYZ_TIMEOUT_SECONDS
    checks = {"database": database_check, "channel_layer": channel_layer_check}
    results = await asyncio.gather(*(_bounded(check, timeout) for check in checks.values()))
    detail = dict(zip(checks, results, strict=True))
    failed = sorted(name for name, result in detail.items() if result != "ok")
    body = {
        "status": "ok" if not failed else "unavailable",
        "checks": {name: "ok" if result == "ok" else "failed" for name, result in detail.items()},
    }
    if failed:
        body["failed"] = failed
        for name in failed:
            logger.warning("readyz: %s %s", name, detail[name])
        if metrics_allowed(request):  # the callers /metrics serves see the detail
            body["detail"] = {name: detail[name] for name in failed}
    return JsonResponse(body, status=200 if not failed else 503)


def _database_query() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


async def database_check() -> None:
    """One query on the registry's database."""
    await database_sync_to_async(_database_query)()


async def channel_layer_check() -> None:
    """Send a message to a fresh channel of this process and receive it back."""
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    # During an outage the layer's receive waits for Redis instead of failing: say so at once.
    unavailable = getattr(layer, "unavailable", None)
    if unavailable is not None and (reason := unavailable()):
        raise RuntimeError(reason)
    # The default prefix: the core Redis layer reads one key per prefix through one lock
    # held by whichever consumer waits, so a channel of another prefix ("readyz.") is never
    # read while the process holds a connection, and the check timed out.
    channel = await layer.new_channel()
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "readyz.ping", "token": token})
    message = await layer.receive(channel)
    if message.get("token") != token:
        raise RuntimeError("the channel layer returned another message")


async def _bounded(check, timeout: float) -> str:
    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except Exception as error:  # a failed dependency is the answer, not a crash
        return f"failed: {type(error).__name__}: {str(error)[:200]}"
    return "ok"
