"""The live-session filters in the operator's words: state and server instance (user and resumable are Django's)."""

from django.contrib import admin
from django.db.models import QuerySet


class StateFilter(admin.SimpleListFilter):
    """Attached (a connection holds it) or detached (it waits for a resume)."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("attached", "attached"), ("detached", "detached")]

    def queryset(self, request, queryset: QuerySet) -> QuerySet:
        if self.value() == "attached":
            return queryset.filter(detached_at__isnull=True)
        if self.value() == "detached":
            return queryset.filter(detached_at__isnull=False)
        return queryset


class InstanceFilter(admin.RelatedOnlyFieldListFilter):
    """The server instance (host:pid) that holds the session; only instances holding sessions are listed."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.title = "server instance"
        self.empty_value_display = "none (detached)"
