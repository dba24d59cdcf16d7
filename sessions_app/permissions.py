"""The sessions API's permission: Django's model permissions, as the admin grants them.

DRF's `DjangoModelPermissions` lets any authenticated user read; here reading needs the
model's view permission too, so the API grants exactly what the admin does: view to list
and read sessions, delete to terminate them, and the model's own "Can send events to live
session" (send_events_livesession) to send them events. Kept apart from api.py for the reason given
in authentication.py (REST_FRAMEWORK names it).
"""

from rest_framework.permissions import DjangoModelPermissions

VIEW = ["%(app_label)s.view_%(model_name)s"]


class ModelPermissions(DjangoModelPermissions):
    """view_<model> to read, add/change/delete_<model> to write; no permission, no access."""

    perms_map = {**DjangoModelPermissions.perms_map, "GET": VIEW, "HEAD": VIEW, "OPTIONS": VIEW}

    def _queryset(self, view):
        # The view's `queryset` names the model without running get_queryset(), which reads
        # (and may reject) the query string: a caller without permission learns nothing from it.
        return view.queryset if getattr(view, "queryset", None) is not None else super()._queryset(view)


class SendEventsPermission(ModelPermissions):
    """POST needs "Can send events to live session"; the rest as ModelPermissions."""

    perms_map = {**ModelPermissions.perms_map, "POST": ["%(app_label)s.send_events_%(model_name)s"]}
