"""Resolve a client's workspace path against the configured roots. No Channels, no ORM.

Containment is decided twice, and before existence. First lexically, touching nothing: the
path as sent must start with a root (as configured, or its real path) and stay inside it
once `..` is folded, so a path outside the roots is refused without a single filesystem
call and the answer says nothing about it (not even whether it holds symlinks). Then the
path is resolved with realpath (symlinks and `..`) and compared again, which refuses a
symlink inside a root that points out. Comparisons use `os.path.commonpath`, never a
string prefix: `/srv/ws-evil` is not inside `/srv/ws`. This module blocks on the
filesystem; sessions_app/resolver.py runs it off the event loop with a time bound.
"""

import os
from collections.abc import Iterable
from functools import lru_cache

from .errors import InvalidRequest, WorkspaceForbidden, WorkspaceNotFound


def workspace_resolve(raw_path: str, *, roots: Iterable[str] = (), lexical_roots: Iterable[str] = ()) -> str:
    """Return the real path of an existing directory inside one of `roots` (any, if empty).

    `roots` are real paths; `lexical_roots` (the roots as configured) are accepted too by
    the lexical check. Blocks on the filesystem.
    """
    roots = list(roots)
    if roots and not lexically_within(raw_path, [*roots, *lexical_roots]):
        raise WorkspaceForbidden(f"{raw_path!r} is outside the allowed workspace roots.")
    real = os.path.realpath(raw_path)
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


def lexically_within(raw_path: str, roots: Iterable[str]) -> bool:
    """Whether the path as written starts with a root and stays inside it once `..` is folded. Pure."""
    if not os.path.isabs(raw_path):
        return False
    folded = os.path.normpath(raw_path)
    return any(is_within(raw_path, root) and is_within(folded, root) for root in roots)


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
