"""Authentication for the sessions API: bearer tokens, beside the admin's session cookie.

Kept out of api.py: DRF reads REST_FRAMEWORK's authentication classes while its views
module loads, so this module must import nothing that imports rest_framework.views.
"""

from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from .tokens import token_authenticate


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>` with an API token (sessions_app.tokens), as on /ws.

    Listed in REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"].
    """

    keyword = b"bearer"

    def authenticate(self, request: Request):
        """(user, token) for a known token; None without a bearer header; 401 otherwise."""
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed("The Authorization header must be `Bearer <token>`.")
        try:
            token = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise AuthenticationFailed("The token must be ASCII.") from None
        user = token_authenticate(token)
        if user is None:
            raise AuthenticationFailed("Unknown or revoked token.")
        return user, token

    def authenticate_header(self, request: Request) -> str:
        """Makes DRF answer 401 (not 403) to requests without credentials."""
        return 'Bearer realm="api"'
