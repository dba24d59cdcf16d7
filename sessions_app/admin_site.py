"""The admin site, with the service at a glance on its index page.

Kept apart from admin.py: the site class is imported while the default site is being
built, before admin.py's registrations may run.
"""

from django.contrib import admin

# The admin's live channel (admin_live.py), routed in routing.py.
LIVE_PATH = "/admin/live/"


class WssAdminSite(admin.AdminSite):
    """The admin, its index titled with the live-session count and showing each instance and the last hour."""

    site_header = "wss-sessions"
    site_title = "wss-sessions admin"
    index_template = "sessions_app/admin/index.html"
    # The app list beside every page would take a quarter of a laptop screen from the session list.
    enable_nav_sidebar = False

    def each_context(self, request):
        """Every admin page knows where its live channel is."""
        return {**super().each_context(request), "live_path": LIVE_PATH}

    def index(self, request, extra_context=None):
        """Title the index with the live-session count; show the glance to those who may view sessions."""
        from .admin_pages import index_context_sync

        context = index_context_sync()
        glance = request.user.has_perm("sessions_app.view_livesession")
        extra = {
            "title": context["title"],
            "live_session_count": context["live"],
            "detached_session_count": context["detached"],
            "glance": context if glance else None,
        }
        return super().index(request, {**extra, **(extra_context or {})})
