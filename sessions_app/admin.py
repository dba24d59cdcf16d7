"""The operators' view: live sessions and server instances, read-only; API tokens."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.timesince import timesince

from .audit import ACTED, session_event_audited, sessions_terminate_audited, terminate_summary
from .delivery import EventError
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


@admin.register(LiveSession)
class LiveSessionAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "workspace_dir",
        "client_addr",
        "user",
        "created_at",
        "age",
        "state",
        "instance",
        "instance_alive",
    ]
    list_select_related = ["instance", "user"]
    search_fields = ["id", "workspace_dir"]
    list_filter = [("detached_at", admin.EmptyFieldListFilter), "resumable", ("created_at", admin.DateFieldListFilter)]
    exclude = ["resume_token_hash"]
    date_hierarchy = "created_at"
    actions = ["terminate_sessions", "send_notice"]

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting a row would leave its socket open: terminating is the way to end a session.
        return False

    @admin.action(description="Terminate selected sessions", permissions=["terminate"])
    def terminate_sessions(self, request, queryset) -> None:
        results = sessions_terminate_audited(
            list(queryset.values_list("pk", flat=True)), via="admin", user=request.user
        )
        if any(results[result] for result in ACTED) or not results[TerminateResult.NOT_DELIVERED]:
            self.message_user(request, terminate_summary(results), messages.SUCCESS)
        if failed := results[TerminateResult.NOT_DELIVERED]:
            self.message_user(
                request,
                f"{failed} session{' was' if failed == 1 else 's were'} not terminated: the channel layer (Redis) "
                "is unavailable. Nothing was done to them; try again shortly.",
                messages.ERROR,
            )
        if gone := results[TerminateResult.NOT_FOUND]:
            self.message_user(
                request, f"{gone} session{' had' if gone == 1 else 's had'} already ended.", messages.WARNING
            )

    def has_terminate_permission(self, request) -> bool:
        # Terminating is the delete of this model: "Can delete live session" grants it.
        return request.user.has_perm("sessions_app.delete_livesession")

    @admin.action(description="Send a notice to the selected sessions", permissions=["send_events"])
    def send_notice(self, request, queryset) -> TemplateResponse | None:
        form = NoticeForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form}
            context["sessions"] = list(queryset)
            return TemplateResponse(request, "admin/sessions_app/livesession/send_notice.html", context)
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

    def has_send_events_permission(self, request) -> bool:
        return request.user.has_perm("sessions_app.send_events_livesession")

    @admin.display(description="age")
    def age(self, session: LiveSession) -> str:
        return timesince(session.created_at, timezone.now())

    @admin.display(description="state", ordering="detached_at")
    def state(self, session: LiveSession) -> str:
        if session.detached_at is None:
            return "attached"
        return f"detached since {session.detached_at:%Y-%m-%d %H:%M:%S} UTC"

    @admin.display(description="instance alive", boolean=True)
    def instance_alive(self, session: LiveSession) -> bool | None:
        return None if session.instance is None else session.instance.is_alive


@admin.register(ServerInstance)
class ServerInstanceAdmin(ReadOnlyAdmin):
    list_display = ["id", "host", "pid", "started_at", "heartbeat_at", "alive", "session_count"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(live_sessions=Count("sessions"))

    @admin.display(description="alive", boolean=True)
    def alive(self, instance: ServerInstance) -> bool:
        return instance.is_alive

    @admin.display(description="sessions")
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
