"""The sessions API, after Jupyter Server's /api/sessions, built on Django REST framework.

    GET    /api/sessions              paginated; ?workspace=<real path>, ?instance=<boot id>,
                                      ?state=attached|detached
    GET    /api/sessions/<id>
    DELETE /api/sessions/<id>         terminate through the channel layer: 204, 404, or 503
                                      when the channel layer did not take it (nothing done)

Who may call it is settings.REST_FRAMEWORK's business: Django's model permissions on live
sessions, as in the admin (sessions_app/permissions.py); errors are
DRF's JSON bodies, {"detail": ...}, with their HTTP status.
"""

import uuid

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

from .audit import session_terminate_audited
from .models import LiveSession, ServerInstance
from .terminate import TerminateResult


class NotDelivered(APIException):
    """503: the channel layer did not take the terminate; the session is untouched."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "not_delivered"
    wait = 5  # DRF sends it as Retry-After


class SessionPagination(PageNumberPagination):
    """?page=N&page_size=M, at most 1000 a page."""

    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class InstanceSerializer(serializers.ModelSerializer):
    alive = serializers.BooleanField(source="is_alive", read_only=True)

    class Meta:
        model = ServerInstance
        fields = ["id", "host", "pid", "started_at", "heartbeat_at", "alive"]


class LiveSessionSerializer(serializers.ModelSerializer):
    instance = InstanceSerializer(read_only=True, allow_null=True)
    user = serializers.SlugRelatedField(slug_field="username", read_only=True)
    state = serializers.SerializerMethodField()

    class Meta:
        model = LiveSession
        fields = [
            "id",
            "workspace_dir",
            "created_at",
            "client_addr",
            "user",
            "state",
            "resumable",
            "detached_at",
            "instance",
        ]

    def get_state(self, session: LiveSession) -> str:
        """`attached` (a connection holds it) or `detached` (waiting for a resume; `instance` is null)."""
        return "detached" if session.is_detached else "attached"


class SessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Live sessions: list, read one, terminate one."""

    queryset = LiveSession.objects.all()  # names the model for the permission check
    serializer_class = LiveSessionSerializer
    pagination_class = SessionPagination
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        queryset = LiveSession.objects.select_related("instance", "user").order_by("-created_at", "id")
        params = self.request.query_params
        if "workspace" in params:
            queryset = queryset.filter(workspace_dir=params["workspace"])
        if "instance" in params:
            queryset = queryset.filter(instance_id=_uuid(params["instance"], "instance"))
        if "state" in params:
            if params["state"] not in {"attached", "detached"}:
                raise ValidationError({"state": "must be attached or detached"})
            queryset = queryset.filter(detached_at__isnull=params["state"] == "attached")
        return queryset

    def get_object(self) -> LiveSession:
        try:
            return self.get_queryset().get(pk=_uuid(self.kwargs["pk"], "session id", not_found=True))
        except LiveSession.DoesNotExist:
            raise NotFound(f"No live session {self.kwargs['pk']}.") from None

    def destroy(self, request: Request, pk: str) -> Response:
        """Terminate the session: its consumer sends `session_terminated` and closes 4410."""
        session_id = _uuid(pk, "session id", not_found=True)
        result = session_terminate_audited(session_id, via="sessions API", user=request.user)
        if result is TerminateResult.NOT_FOUND:
            raise NotFound(f"No live session {pk}.")
        if result is TerminateResult.NOT_DELIVERED:
            raise NotDelivered(
                f"Session {pk} was not terminated: the channel layer (Redis) is unavailable. Nothing was done; "
                "try again shortly."
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


def _uuid(value: str, what: str, *, not_found: bool = False) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, DjangoValidationError):
        if not_found:
            raise NotFound(f"No live session {value[:64]}.") from None
        raise ValidationError({what: f"{value[:64]!r} is not a UUID."}) from None
