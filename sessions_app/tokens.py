"""API tokens: create, authenticate, revoke. Plain functions, callable from any view or middleware.

A raw token is `wss_` followed by 43 URL-safe characters (256 random bits). Only its
SHA-256 is stored, so a database dump does not hold usable tokens; the raw value is shown
to its creator once. High entropy makes a plain, unsalted hash enough: nothing to guess.
"""

import hashlib
import secrets

from django.contrib.auth.base_user import AbstractBaseUser
from django.utils import timezone

from .models import ApiToken

TOKEN_PREFIX = "wss_"
MAX_TOKEN_CHARS = 200  # anything longer is not one of ours: refuse before hashing


def bearer_credential(authorization: str) -> str | None:
    """The credential of an `Authorization: Bearer <credential>` value, if it is one."""
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return credential.strip()
    return None


def token_hash(raw: str) -> str:
    """The stored form of a raw token."""
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def token_issue(token: ApiToken) -> str:
    """Give an unsaved token a fresh key (its prefix and hash); returns the raw token."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token.key_prefix, token.key_hash = raw[:12], token_hash(raw)
    return raw


def token_create(*, user: AbstractBaseUser, name: str) -> tuple[ApiToken, str]:
    """Create a token for `user`; returns the row and the raw token, which is not stored."""
    token = ApiToken(user=user, name=name)
    raw = token_issue(token)
    token.save(force_insert=True)
    return token, raw


def token_authenticate(raw: str) -> AbstractBaseUser | None:
    """The active user a raw token belongs to, or None (unknown, revoked, or inactive user). Sync."""
    if not raw or len(raw) > MAX_TOKEN_CHARS:
        return None
    token = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=token_hash(raw), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is None:
        return None
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token.user


def token_revoke(*, token: ApiToken) -> None:
    """Revoke a token for good; revoking twice keeps the first time."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
