"""The operators' view: live sessions and server instances, read-only; API tokens."""

import uuid
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html

from .admin_filters import InstanceFilter, StateFilter
from .admin_pages import instance_health
from .audit import session_event_audited, sessions_terminate_audited_by_id
from .delivery import EventError
from .display import short_id, short_span
from .instances import resume_grace_seconds
from .models import ApiToken, LiveSession, ServerInstance
from .terminate import TerminateResult
from .tokens import token_issue, token_revoke


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows are written by the servers only."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class NoticeForm(forms.Form):
    """The text of a notice the admin sends to sessions."""

    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 3, "cols": 80}), max_length=2000)


def badge(state: str, detail: str = "") -> str:
    """A state as a short coloured badge; `detail` (e.g. the grace left) beside it."""
    text = f"{state} · {detail}" if detail else state
    return format_html('<span class="live-badge live-badge-{}">{}</span>', state, text)


def session_state(session: LiveSession) -> tuple[str, str]:
    """`attached`, `detached` with the grace left, or `ending` (its grace ran out, or its instance is dead)."""
    if session.detached_at is None:
        return ("attached", "") if session.instance is None or session.instance.is_alive else ("ending", "")
    left = session.detached_at + timedelta(seconds=resume_grace_seconds()) - timezone.now()
    if left.total_seconds() <= 0:
        return "ending", ""
    return "detached", f"{short_span(left)} left"


def created_ago(session: LiveSession) -> str:
    """How long the session has lived, e.g. "3 min"."""
    return short_span(timezone.now() - session.created_at, seconds=False)


def instance_label(instance: ServerInstance) -> str:
    """host:pid with a dot: green while its heartbeat is fresh, red once it is dying or dead."""
    alive = instance_health(instance, now=timezone.now()) == "alive"
    return format_html(
        '<span class="live-dot live-dot-{}" title="{}"></span><span title="instance {}">{}:{}</span>',
        "alive" if alive else "dead",
        "alive" if alive else "not heartbeating",
        instance.id,
        instance.host,
        instance.pid,
    )


# What the admin says about each session a terminate was asked for: a message level and its text.
TERMINATE_MESSAGES: dict[TerminateResult, tuple[int, str]] = {
    TerminateResult.REMOVED: (messages.SUCCESS, "terminated."),
    TerminateResult.DELIVERED: (messages.SUCCESS, "terminate delivered: its server closes it."),
    TerminateResult.NOT_DELIVERED: (
        messages.ERROR,
        "not terminated: the channel layer (Redis) is unavailable. Nothing was done to it; try again shortly.",
    ),
    TerminateResult.NOT_FOUND: (messages.WARNING, "not found: it had already ended."),
}


def selected_row(session: LiveSession) -> dict:
    """A selected session as an action's page lists it: the full id, its state, workspace and instance."""
    state, detail = session_state(session)
    instance = instance_label(session.instance) if session.instance is not None else "—"
    return {"session": session, "state": badge(state, detail), "instance": instance}


def selected_but_gone(request, sessions: list[LiveSession]) -> list[str]:
    """The ids the operator ticked that are no longer live sessions: they ended since the page showed them."""
    live = {str(session.pk) for session in sessions}
    if forms.BooleanField(required=False).clean(request.POST.get("select_across")):
        return []  # "select all": the ticked ids are not the whole selection
    gone = []
    for value in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME):
        try:
            session_id = str(uuid.UUID(value))
        except ValueError:
            continue
        if session_id not in live and session_id not in gone:
            gone.append(session_id)
    return gone


class LiveChangeList:
    """A changelist the live channel keeps up to date (admin_live.py): its template and what it needs."""

    change_list_template = "sessions_app/admin/live_change_list.html"

    def changelist_view(self, request, extra_context=None):
        context = {"live_model": self.model._meta.model_name, **(extra_context or {})}
        return super().changelist_view(request, context)


@admin.register(LiveSession)
class LiveSessionAdmin(LiveChangeList, ReadOnlyAdmin):
    list_display = ["short_id", "workspace", "user", "client_addr", "state", "age", "held_by"]
    list_select_related = ["instance", "user"]
    search_fields = ["id", "workspace_dir"]
    search_help_text = "Search by workspace or session id."
    list_filter = [
        StateFilter,
        ("instance", InstanceFilter),
        ("user", admin.RelatedOnlyFieldListFilter),
        "resumable",
    ]
    exclude = ["resume_token_hash"]
    readonly_fields = ["id"]  # the full id on the detail page; the list shows the short one
    actions = ["terminate_sessions", "send_notice"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a row would leave its socket open: terminating is the way to end a session.
        return False

    @admin.action(description="Terminate selected sessions", permissions=["terminate"])
    def terminate_sessions(self, request, queryset) -> TemplateResponse | None:
        # As Django's delete_selected: a page asks first, its "Yes" (post=yes) terminates.
        sessions = list(queryset.select_related("instance"))
        gone = selected_but_gone(request, sessions)
        if request.POST.get("post") != "yes" and sessions:
            count = len(sessions)
            title = f"Terminate {count} live session{'' if count == 1 else 's'}?"
            return self.action_page(request, "terminate_confirmation.html", sessions, title=title, gone=gone)
        results = sessions_terminate_audited_by_id([session.pk for session in sessions], via="admin", user=request.user)
        results.update(dict.fromkeys(gone, TerminateResult.NOT_FOUND))
        for session_id, result in results.items():
            level, text = TERMINATE_MESSAGES[result]
            self.message_user(request, f"Session {session_id}: {text}", level)
        return None

    def has_terminate_permission(self, request) -> bool:
        # Terminating is the delete of this model: "Can delete live session" grants it.
        return request.user.has_perm("sessions_app.delete_livesession")

    @admin.action(description="Send a notice to the selected sessions", permissions=["send_events"])
    def send_notice(self, request, queryset) -> TemplateResponse | None:
        form = NoticeForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            sessions = list(queryset.select_related("instance"))
            count = len(sessions)
            title = f"Send a notice to {count} live session{'' if count == 1 else 's'}"
            return self.action_page(request, "send_notice.html", sessions, title=title, form=form)
        for session_id in queryset.values_list("pk", flat=True):
            try:
                seq = session_event_audited(
                    session_id, event="notice", data={"text": form.cleaned_data["text"]}, via="admin", user=request.user
                )
            except EventError as error:
                self.message_user(request, f"Session {session_id}: not sent: {error}", messages.ERROR)
            else:
                self.message_user(request, f"Session {session_id}: notice sent as event {seq}.", messages.SUCCESS)
        return None

    def action_page(self, request, template: str, sessions: list[LiveSession], **context) -> TemplateResponse:
        """An action's intermediate page: the selected sessions, and a form that posts the action again."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "selected": [selected_row(session) for session in sessions],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "changelist_url": request.get_full_path(),  # back to the list as it was: filters, search, sort
            **context,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, f"admin/sessions_app/livesession/{template}", context)

    def has_send_events_permission(self, request) -> bool:
        return request.user.has_perm("sessions_app.send_events_livesession")

    @admin.display(description="id", ordering="id")
    def short_id(self, session: LiveSession) -> str:
        return format_html('<span title="{}">{}</span>', session.id, short_id(session.id))

    @admin.display(description="workspace", ordering="workspace_dir")
    def workspace(self, session: LiveSession) -> str:
        return format_html('<span title="{}">{}</span>', session.workspace_dir, session.workspace_dir)

    @admin.display(description="age", ordering="-created_at")
    def age(self, session: LiveSession) -> str:
        return format_html(
            '<span title="{}">{}</span>', f"{session.created_at:%Y-%m-%d %H:%M:%S} UTC", created_ago(session)
        )

    @admin.display(description="state", ordering="detached_at")
    def state(self, session: LiveSession) -> str:
        state, detail = session_state(session)
        return badge(state, detail)

    @admin.display(description="instance", ordering="instance__host")
    def held_by(self, session: LiveSession) -> str:
        if session.instance is None:
            return "—"
        return instance_label(session.instance)


@admin.register(ServerInstance)
class ServerInstanceAdmin(LiveChangeList, ReadOnlyAdmin):
    list_display = ["short_id", "host_pid", "health", "age", "heartbeat", "session_count"]
    list_display_links = ["short_id"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(live_sessions=Count("sessions"))

    @admin.display(description="id", ordering="id")
    def short_id(self, instance: ServerInstance) -> str:
        return format_html('<span title="{}">{}</span>', instance.id, short_id(instance.id))

    @admin.display(description="instance", ordering="host")
    def host_pid(self, instance: ServerInstance) -> str:
        return instance_label(instance)

    @admin.display(description="state", ordering="-heartbeat_at")
    def health(self, instance: ServerInstance) -> str:
        return badge(instance_health(instance, now=timezone.now()))

    @admin.display(description="age", ordering="started_at")
    def age(self, instance: ServerInstance) -> str:
        return short_span(timezone.now() - instance.started_at)

    @admin.display(description="last heartbeat", ordering="-heartbeat_at")
    def heartbeat(self, instance: ServerInstance) -> str:
        return f"{short_span(timezone.now() - instance.heartbeat_at)} ago"

    @admin.display(description="sessions", ordering="live_sessions")
    def session_count(self, instance: ServerInstance) -> int:
        return instance.live_sessions


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Create (the raw token is shown once, on the next page) and revoke API tokens.

    A token acts as its user, so minting one for someone else is acting as them: only
    superusers may. Other users with the token permissions see, add and revoke their own.
    """

    list_display = ["name", "user", "key_prefix", "created_at", "last_used_at", "revoked"]
    list_select_related = ["user"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["name", "user__username", "key_prefix"]
    readonly_fields = ["key_prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_tokens"]

    def get_fields(self, request, obj=None):
        return ["user", "name"] if obj is None else ["user", "name", *self.readonly_fields]

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if request.user.is_superuser else queryset.filter(user=request.user)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
            kwargs["initial"] = request.user.pk
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        # A token belongs to its user for good: make a new one rather than move it.
        return [] if obj is None else ["user", *self.readonly_fields]

    def save_model(self, request, obj: ApiToken, form, change: bool) -> None:
        if obj.user_id != request.user.pk and not request.user.is_superuser:
            raise PermissionDenied("Only superusers create tokens for other users.")
        if not change:
            raw = token_issue(obj)
            super().save_model(request, obj, form, change)
            self.message_user(
                request,
                f"API token for {obj.user}: {raw} — copy it now, it is not stored and will not be shown again.",
                messages.WARNING,
            )
            return
        super().save_model(request, obj, form, change)

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request, queryset) -> None:
        for token in queryset:
            token_revoke(token=token)
        self.message_user(request, f"Revoked {len(queryset)} token(s).", messages.SUCCESS)

    @admin.display(description="revoked", boolean=True)
    def revoked(self, token: ApiToken) -> bool:
        return token.is_revoked
