"""HTTP routes: the console, health, metrics, the sessions API and the admin."""

from django.contrib import admin
from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from sessions_app import health, views
from sessions_app.api import SessionViewSet

api = SimpleRouter()
api.trailing_slash = "/?"  # /api/sessions, as Jupyter spells it, and /api/sessions/
api.register("sessions", SessionViewSet, basename="session")

urlpatterns = [
    path("", views.console, name="console"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("api/", include(api.urls)),
    re_path(r"^api/", views.api_not_found),
    path("admin/", admin.site.urls),
]
