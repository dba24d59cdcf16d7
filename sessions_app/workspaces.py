"""Resolve a client's workspace path against the configured roots. No Channels, no ORM.

The path is resolved with realpath (symlinks and `..`), then compared with the roots by
`os.path.commonpath`, never a string prefix: `/srv/ws-evil` is not inside `/srv/ws`.
Containment is decided before existence, so a forbidden path reveals nothing about it.
"""

import os
from collections.abc import Iterable
from functools import lru_cache

from .errors import InvalidRequest, WorkspaceForbidden, WorkspaceNotFound


def workspace_resolve(raw_path: str, *, roots: Iterable[str] = ()) -> str:
    """Return the real path of an existing directory inside one of `roots` (any, if empty)."""
    real = os.path.realpath(raw_path)
    roots = list(roots)
    if roots and not any(is_within(real, root) for root in roots):
        raise WorkspaceForbidden(f"{raw_path!r} is outside the allowed workspace roots.")
    if not os.path.isdir(real):
        raise WorkspaceNotFound(f"{raw_path!r} does not exist or is not a directory.")
    if not is_utf8(real):
        # A name on disk with bytes that are not UTF-8 comes back surrogate-escaped: it can be
        # neither stored in the registry nor sent back in a reply.
        raise InvalidRequest(f"{raw_path!r} resolves to a path that is not valid UTF-8; use another directory.")
    return real


def is_utf8(path: str) -> bool:
    """Whether `path` is valid Unicode all the way, with no surrogate-escaped bytes."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_within(path: str, root: str) -> bool:
    """True when `path` is `root` or below it (both already real, absolute paths)."""
    return os.path.commonpath([path, root]) == root


def roots_check(roots: Iterable[str]) -> list[str]:
    """Problems with configured roots: each must be an absolute, existing directory."""
    problems = []
    for root in roots:
        if not os.path.isabs(root):
            problems.append(f"workspace root {root!r} is not an absolute path")
        elif not os.path.isdir(root):
            problems.append(f"workspace root {root!r} does not exist or is not a directory")
    return problems


@lru_cache(maxsize=8)
def roots_resolve(roots: tuple[str, ...]) -> tuple[str, ...]:
    """The real paths of the configured roots, so that a symlinked root still contains its own files.

    Cached per configured tuple: resolved once, not on every `new_session`.
    """
    return tuple(os.path.realpath(root) for root in roots)
