"""Authentication for the sessions API: bearer tokens, beside the admin's session cookie.

Kept out of api.py: DRF reads REST_FRAMEWORK's authentication classes while its views
module loads, so this module must import nothing that imports rest_framework.views.
"""

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from .tokens import bearer_credential, token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` with an API token (sessions_app.tokens), as on /ws.

    Listed in REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"].
    """

    def authenticate(self, request: Request):
        """(user, token) for a known token; None without a bearer header; 401 otherwise."""
        token = bearer_credential(request.META.get("HTTP_AUTHORIZATION", ""))
        if token is None:
            return None
        user = token_authenticate(token)
        if user is None:
            raise AuthenticationFailed("Unknown or revoked token.")
        return user, token

    def authenticate_header(self, request: Request) -> str:
        """Makes DRF answer 401 (not 403) to requests without credentials."""
        return 'Bearer realm="api"'
