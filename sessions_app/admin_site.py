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
        """Title the index with the live-session count, and how many of them are detached."""
        from django.db.models import Count, Q

        from .models import LiveSession

        counts = LiveSession.objects.aggregate(
            live=Count("pk"), detached=Count("pk", filter=Q(detached_at__isnull=False))
        )
        live, detached = counts["live"], counts["detached"]
        title = f"Site administration · {live} live session{'' if live == 1 else 's'} ({detached} detached)"
        context = {"title": title, "live_session_count": live, "detached_session_count": detached}
        return super().index(request, {**context, **(extra_context or {})})
