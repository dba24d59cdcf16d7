"""Error reports that never show a credential: Django's filter, with more names and URL passwords.

Django masks settings whose names contain API, TOKEN, KEY, SECRET, PASS or SIGNATURE.
Connection strings such as DATABASE_URL and REDIS_URL carry passwords under other names
(and inside CHANNEL_LAYERS' host addresses); so do Authorization headers. This filter masks
those names too, and scrubs the password of any URL in any value it shows. It serves the
debug page and the e-mailed reports (DEFAULT_EXCEPTION_REPORTER_FILTER).
"""

import re
from typing import Any

from django.views.debug import SafeExceptionReporterFilter

# user:password@ in scheme://user:password@host, in any string.
URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/@\s]*)@", re.IGNORECASE)


def url_credentials_mask(text: str, substitute: str) -> str:
    """`text` with the userinfo of every URL in it replaced."""
    return URL_CREDENTIALS.sub(lambda match: f"{match['scheme']}{substitute}@", text)


class CredentialMaskingFilter(SafeExceptionReporterFilter):
    """Masks connection URLs, addresses, DSNs and Authorization headers besides Django's names."""

    hidden_settings = re.compile(
        "API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|AUTHORIZATION|URL|DSN|ADDRESS|CREDENTIAL",
        flags=re.IGNORECASE,
    )

    def cleanse_setting(self, key: Any, value: Any) -> Any:
        """Django's masking by name, then URL passwords scrubbed from whatever is still shown."""
        cleansed = super().cleanse_setting(key, value)
        return _scrub(cleansed, self.cleansed_substitute)

    def get_traceback_frame_variables(self, request, tb_frame):
        """Local variables of each frame, with URL passwords scrubbed (a DSN in a local, say)."""
        return [
            (name, _scrub(value, self.cleansed_substitute))
            for name, value in super().get_traceback_frame_variables(request, tb_frame)
        ]


def _scrub(value: Any, substitute: str) -> Any:
    if isinstance(value, str):
        return url_credentials_mask(value, substitute)
    if type(value) is dict:
        return {key: _scrub(item, substitute) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_scrub(item, substitute) for item in value)
    return value
