"""The sessions API's permission: Django's model permissions, as the admin grants them.

DRF's `DjangoModelPermissions` lets any authenticated user read; here reading needs the
model's view permission too, so the API grants exactly what the admin does: view to list
and read sessions, delete to terminate them. Kept apart from api.py for the reason given
in authentication.py (REST_FRAMEWORK names it).
"""

from rest_framework.permissions import DjangoModelPermissions

VIEW = ["%(app_label)s.view_%(model_name)s"]


class ModelPermissions(DjangoModelPermissions):
    """view_<model> to read, add/change/delete_<model> to write; no permission, no access."""

    perms_map = {**DjangoModelPermissions.perms_map, "GET": VIEW, "HEAD": VIEW, "OPTIONS": VIEW}

    def has_permission(self, request, view) -> bool:
        """The method's permissions on the model that the view's `queryset` attribute names.

        Not get_queryset(), which reads (and may reject) the query string: a caller without
        permission learns nothing from it.
        """
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return super().has_permission(request, view)
        user = request.user
        perms = self.get_required_permissions(request.method, queryset.model)
        return bool(user and user.is_authenticated and user.has_perms(perms))
