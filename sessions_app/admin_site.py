"""The admin site, with the number of live sessions on its index page.

Kept apart from admin.py: the site class is imported while the default site is being
built, before admin.py's registrations may run.
"""

from django.contrib import admin


class WssAdminSite(admin.AdminSite):
    """The admin, titled with the live-session count on its index."""

    site_header = "wss-sessions"
    site_title = "wss-sessions admin"

    def index(self, request, extra_context=None):
        """Title the index with the live-session count."""
        from .models import LiveSession

        live = LiveSession.objects.count()
        title = f"Site administration · {live} live session{'' if live == 1 else 's'}"
        return super().index(request, {"title": title, "live_session_count": live, **(extra_context or {})})
