"""HTTP views: the browser console at `/` and the Prometheus scrape at `/metrics`."""

import hmac

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from . import metrics
from .addresses import address_in
from .conf import app_settings
from .tokens import bearer_credential


@require_GET
def console(request: HttpRequest) -> HttpResponse:
    """A small page that speaks the protocol from the browser: open a session, watch it, close it."""
    return render(request, "sessions_app/console.html")


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """This process's metrics in the Prometheus text format, for allowed addresses or the token."""
    if not metrics_allowed(request):
        token_set = bool(app_settings.WSS_METRICS_TOKEN)
        response = JsonResponse(
            {"detail": "Metrics are served to WSS_METRICS_ALLOWED_IPS or with the WSS_METRICS_TOKEN bearer token."},
            status=401 if token_set else 403,
        )
        if token_set:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def metrics_allowed(request: HttpRequest) -> bool:
    """The caller presents the token, or connects from an allowed address or network."""
    token = app_settings.WSS_METRICS_TOKEN
    if token:
        presented = bearer_credential(request.headers.get("Authorization", ""))
        if presented is not None and hmac.compare_digest(presented.encode(), token.encode()):
            return True
    return address_in(request.META.get("REMOTE_ADDR", ""), app_settings.WSS_METRICS_ALLOWED_IPS)


def api_not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    """Any other path under /api/: a JSON 404, like the API's own errors."""
    return JsonResponse({"detail": "Not found."}, status=404)
