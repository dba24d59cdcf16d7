"""The live-session registry: one row per server process, one row per live session."""

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from .conf import app_settings


class ServerInstance(models.Model):
    """One running server process. Its heartbeat proves it is alive; its sessions die with it."""

    id = models.UUIDField(
        primary_key=True, default=uuid.uuid4, editable=False, help_text="Boot id, new at every start."
    )
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} ({str(self.id)[:8]})"

    @property
    def is_alive(self) -> bool:
        """Whether the heartbeat is recent enough for the reaper to leave it alone."""
        bound = timedelta(seconds=app_settings.WSS_INSTANCE_TIMEOUT_SECONDS)
        return timezone.now() - self.heartbeat_at <= bound


class LiveSession(models.Model):
    """A session: attached to one connection on one server instance, or detached awaiting resume.

    Attached: `instance` and `channel_name` name the connection that holds it. Detached (a
    resumable session whose connection ended other than by the client's close 1000): no
    instance, no channel, `detached_at` set; it is removed when WSS_RESUME_GRACE_SECONDS pass.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workspace_dir = models.TextField(help_text="Real path of the workspace, symlinks resolved.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    channel_name = models.CharField(
        max_length=255, blank=True, help_text="The consumer's channel-layer address; empty while detached."
    )
    client_addr = models.CharField(max_length=64, blank=True, help_text="Client host:port as the server saw it.")
    # CASCADE, not SET_NULL: a row is detached only on purpose (sessions.session_detach, and
    # the instance deletes, which detach resumable sessions first, setting detached_at too);
    # whatever is still attached when its instance goes (a non-resumable session) goes with it.
    instance = models.ForeignKey(
        ServerInstance, null=True, blank=True, on_delete=models.CASCADE, related_name="sessions"
    )
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    resumable = models.BooleanField(default=False, help_text="Opened with resumable: true (protocol v1.1).")
    resume_token_hash = models.CharField(
        max_length=64, blank=True, editable=False, help_text="SHA-256 of the current resume token; never the token."
    )
    detached_at = models.DateTimeField(
        null=True, blank=True, db_index=True, help_text="When its connection ended; empty while attached."
    )
    # Session events (protocol v1.2, sessions_app/delivery.py): the sequence and the sender's
    # token bucket live on the row, so one row lock orders and bounds every sender of every process.
    last_seq = models.BigIntegerField(default=0, editable=False, help_text="The seq of the last event sent to it.")
    event_tokens = models.FloatField(default=0, editable=False)
    event_tokens_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "live session"
        permissions = [("send_events_livesession", "Can send events to live session")]
        constraints = [
            # Attached rows have an instance; detached rows have none: one or the other, always.
            models.CheckConstraint(
                condition=models.Q(instance__isnull=False, detached_at__isnull=True)
                | models.Q(instance__isnull=True, detached_at__isnull=False),
                name="livesession_attached_xor_detached",
            ),
        ]

    @property
    def is_detached(self) -> bool:
        """Whether no connection holds the session (it waits for a resume)."""
        return self.detached_at is not None

    def __str__(self) -> str:
        return str(self.id)


class SessionEvent(models.Model):
    """One event kept for a resumable session's replay: the last WSS_SESSION_EVENTS_KEPT of them."""

    id = models.BigAutoField(primary_key=True)
    # ON DELETE CASCADE in the database (migration 0004), not in Django: the window goes with its
    # session, and deleting a session that never had an event costs no extra query.
    session = models.ForeignKey(LiveSession, on_delete=models.DO_NOTHING, related_name="events")
    seq = models.BigIntegerField()
    event = models.CharField(max_length=64)
    data = models.JSONField()
    sent_at = models.DateTimeField()

    class Meta:
        ordering = ["session", "seq"]
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="sessionevent_session_seq_unique")]

    def __str__(self) -> str:
        return f"{self.session_id} #{self.seq} {self.event}"


class ApiToken(models.Model):
    """A bearer token for scripts and browsers. Only its SHA-256 is stored; the raw key is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'CI runner'.")
    key_prefix = models.CharField(max_length=12, editable=False, help_text="The first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @property
    def is_revoked(self) -> bool:
        """Whether the token has been revoked; a revoked token never authenticates again."""
        return self.revoked_at is not None


class ActivityMinute(models.Model):
    """Sessions one server instance opened and ended in one minute: the admin index's history.

    Each process counts in memory and upserts its current minutes on its heartbeat; the
    row outlives the instance, so the last hour stays whole after a process goes.
    """

    instance_id = models.UUIDField(help_text="The boot id of the ServerInstance that counted.")
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    minute = models.DateTimeField(db_index=True, help_text="The start of the minute, UTC.")
    opened = models.PositiveIntegerField(default=0)
    ended = models.PositiveIntegerField(default=0)
    stopped = models.BooleanField(default=False, help_text="Written by the instance's own stop: it was not reaped.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["instance_id", "minute"], name="activityminute_instance_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.host}:{self.pid} {self.minute:%H:%M} +{self.opened} -{self.ended}"
