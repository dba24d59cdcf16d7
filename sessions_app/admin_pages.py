"""What the live admin pages show, rendered on the server: changelist rows and filters, the index's glance.

Rows are rendered by Django's own changelist code, as on the page a browser loads, so what
the live channel (admin_live.py) pushes is what a reload would show. Synchronous: it runs
the ORM and the templates.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.templatetags.admin_list import items_for_result, pagination, result_list
from django.core.exceptions import PermissionDenied, SuspiciousOperation, ValidationError
from django.db.models import Count, Q
from django.http import HttpRequest, QueryDict
from django.template.loader import render_to_string
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone

from . import activity
from .conf import app_settings
from .display import minute_chart_svg, short_span
from .models import LiveSession, ServerInstance

# The changelists the live channel serves, by model name (each ModelAdmin checks its own permission).
LIVE_MODELS: dict[str, type] = {"livesession": LiveSession, "serverinstance": ServerInstance}
# Django's "there was a bad lookup" marker: the page's own, not a filter.
ERROR_FLAG = "e"
# The filter sidebar, as the changelist page renders it too (live_change_list.html).
FILTERS_TEMPLATE = "sessions_app/admin/changelist_filter.html"


class PageRefused(Exception):
    """A page the live channel cannot serve (a bad frame, query or permission): sent as an `error` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ChangelistView:
    """One rendering of a changelist's results: the rows that needed rendering, by primary key, and the order."""

    rows: dict[str, str]  # only rows whose key differs from what the page has (all of them for a table)
    keys: dict[str, tuple]  # every row's key: what it shows, before rendering
    order: list[str]
    table: str  # the whole results block as Django renders it (headers and all), when asked for
    paginator: str
    filters: str  # the filter sidebar (#changelist-filter): its choices follow the registry, e.g. a new instance
    total: int  # rows on this page, for the action counter


def model_admin_for(model_name: str) -> admin.ModelAdmin:
    """The registered ModelAdmin of a live model; PageRefused for any other name."""
    model = LIVE_MODELS.get(model_name)
    if model is None:
        raise PageRefused("unknown_page", "This page is not live.")
    return admin.site.get_model_admin(model)


def page_request(user: Any, path: str, query: str) -> HttpRequest:
    """A GET request for `path?query` made by `user`, as the admin views receive it."""
    request = HttpRequest()
    request.method = "GET"
    request.path = request.path_info = path
    request.GET = QueryDict(query.lstrip("?"), mutable=True)
    request.GET.pop(ERROR_FLAG, None)
    request.GET._mutable = False
    request.user = user
    request.META = {"SERVER_NAME": "localhost", "SERVER_PORT": "80", "QUERY_STRING": request.GET.urlencode()}
    try:
        request.resolver_match = resolve(path)  # the rows' links keep the filters, as on the page
    except Resolver404:
        request.resolver_match = None
    return request


def row_key(model_admin: admin.ModelAdmin, obj: Any, list_display: list[str]) -> tuple:
    """What a row shows, as cheap values: the row is rendered again only when this changes."""
    values = []
    for name in list_display:
        if name == "action_checkbox":
            continue  # the same for every refresh of a row
        attribute = getattr(model_admin, name, None)
        values.append(str(attribute(obj) if callable(attribute) else getattr(obj, name, None)))
    return tuple(values)


def changelist_render_sync(
    user: Any, model_name: str, query: str, *, known: dict[str, tuple] | None = None, table: bool = False
) -> ChangelistView:
    """The results of the `model_name` changelist for `user` with this query string (filters, search, sort, page).

    Rows whose key is in `known` unchanged are not rendered; with `table`, every row is, into
    Django's whole results block.
    """
    model_admin = model_admin_for(model_name)
    opts = model_admin.model._meta
    path = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    request = page_request(user, path, query)
    if not model_admin.has_view_or_change_permission(request):
        raise PageRefused("forbidden", "You may not view this page.")
    try:
        changelist = model_admin.get_changelist_instance(request)
    except (IncorrectLookupParameters, SuspiciousOperation, ValidationError, ValueError, PermissionDenied):
        raise PageRefused("invalid_query", "The page's filters are not valid; reload it.") from None
    changelist.formset = None
    keys = {str(obj.pk): row_key(model_admin, obj, changelist.list_display) for obj in changelist.result_list}
    rows: dict[str, str] = {}
    rendered_table = ""
    if table and keys:
        context = result_list(changelist)
        for obj, cells in zip(changelist.result_list, context["results"], strict=True):
            rows[str(obj.pk)] = f"<tr>{''.join(cells)}</tr>"
        rendered_table = render_to_string("admin/change_list_results.html", context)
    else:
        for obj in changelist.result_list:
            pk = str(obj.pk)
            if (known or {}).get(pk) != keys[pk]:
                rows[pk] = f"<tr>{''.join(items_for_result(changelist, obj, None))}</tr>"
    return ChangelistView(
        rows=rows,
        keys=keys,
        order=list(keys),
        table=rendered_table,
        paginator=render_to_string("admin/pagination.html", pagination(changelist)),
        filters=render_to_string(FILTERS_TEMPLATE, {"cl": changelist}).strip(),
        total=len(keys),
    )


# --- The index: the service at a glance ---------------------------------------------------


def instance_health(instance: ServerInstance, *, now) -> str:
    """`alive`, `dying` (two heartbeats or more overdue) or `dead` (past the timeout: the reaper will take it)."""
    silent = (now - instance.heartbeat_at).total_seconds()
    if silent > app_settings.WSS_INSTANCE_TIMEOUT_SECONDS:
        return "dead"
    if silent > 2 * app_settings.WSS_HEARTBEAT_SECONDS:
        return "dying"
    return "alive"


def index_context_sync() -> dict[str, Any]:
    """The index's title line and its glance: sessions per instance, the last hour, instances gone."""
    now = timezone.now()
    counts = LiveSession.objects.aggregate(live=Count("pk"), detached=Count("pk", filter=Q(detached_at__isnull=False)))
    live, detached = counts["live"], counts["detached"]
    instances = [
        {
            "instance": instance,
            "sessions": instance.live_sessions,
            "age": short_span(now - instance.started_at),
            "heartbeat": short_span(now - instance.heartbeat_at),
            "health": instance_health(instance, now=now),
        }
        for instance in ServerInstance.objects.annotate(live_sessions=Count("sessions")).order_by("host", "pid")
    ]
    history = activity.history_sync()
    labels = [f"{minute:%H:%M}" for minute in history.minutes]
    gone = [
        {"instance": instance, "ago": short_span(now - instance.last_seen - timedelta(minutes=1))}
        for instance in activity.instances_gone_sync()
    ]
    return {
        "live": live,
        "detached": detached,
        "title": f"Site administration · {live} live session{'' if live == 1 else 's'} ({detached} detached)",
        "instances": instances,
        "gone": gone,
        "chart": minute_chart_svg(history.opened, history.ended, labels=labels),
        "opened_last_hour": sum(history.opened),
        "ended_last_hour": sum(history.ended),
    }


def glance_render_sync() -> dict[str, str]:
    """The index's live parts as HTML: its title and the glance panel."""
    context = index_context_sync()
    return {"title": context["title"], "glance": render_to_string("sessions_app/admin/glance.html", context)}
