"""List a directory inside a session's workspace, confined and bounded. Blocks on the filesystem.

Confinement follows sessions_app/workspaces.py: the path is checked as written first (relative,
no `..`, no NUL), touching nothing; then its real path (symlinks resolved) must still be inside
the workspace, so a symlink that points out is refused while one that stays in is followed.
Bounds: at most MAX_SCANNED entries are read from the directory and the scan stops at its
deadline; the reply keeps at most `limit` entries and `max_bytes` of names.
"""

import os
import time
from dataclasses import dataclass
from typing import Any

from sessions_app.errors import InvalidRequest, WorkspaceForbidden, WorkspaceNotFound
from sessions_app.workspaces import is_utf8, is_within

MAX_SCANNED = 10_000
ENTRY_OVERHEAD_BYTES = 64  # the JSON around one entry's name: keys, kind, size


@dataclass(frozen=True, slots=True)
class Listing:
    """A directory's entries by name (each: name, kind, size), and whether some were left out."""

    path: str
    entries: list[dict[str, Any]]
    truncated: bool


def relative_path_check(path: str) -> str:
    """The path as written, normalized ("" for the workspace itself), or InvalidRequest. Pure."""
    if "\x00" in path:
        raise InvalidRequest('"path" contains a NUL character.')
    if not is_utf8(path):
        raise InvalidRequest('"path" is not valid Unicode (it has a lone surrogate).')
    if path.startswith("/"):
        raise InvalidRequest('"path" must be relative to the session\'s workspace, not absolute.')
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InvalidRequest('"path" may not contain "..": it names a directory inside the workspace.')
    return "/".join(parts)


def workspace_list(workspace_dir: str, path: str, *, limit: int, max_bytes: int, deadline: float) -> Listing:
    """The entries of `path` inside `workspace_dir` (a real path), sorted by name, within the bounds."""
    relative = relative_path_check(path)
    real = os.path.realpath(os.path.join(workspace_dir, relative))
    if not is_within(real, workspace_dir):
        raise WorkspaceForbidden(f"{path!r} leads outside the session's workspace.")
    found: list[dict[str, Any]] = []
    truncated = False
    try:
        with os.scandir(real) as scan:
            for entry in scan:
                if len(found) >= MAX_SCANNED or time.monotonic() > deadline:
                    truncated = True
                    break
                described = entry_describe(entry)
                if described is not None:
                    found.append(described)
    except (FileNotFoundError, NotADirectoryError):
        raise WorkspaceNotFound(f"{path!r} does not exist in the workspace or is not a directory.") from None
    except PermissionError:
        raise WorkspaceForbidden(f"{path!r} cannot be read by the server.") from None
    found.sort(key=lambda described: described["name"])
    entries, used = [], 0
    for described in found:
        used += len(described["name"].encode()) + ENTRY_OVERHEAD_BYTES
        if len(entries) >= limit or used > max_bytes:
            truncated = True
            break
        entries.append(described)
    return Listing(path=relative, entries=entries, truncated=truncated)


def entry_describe(entry: os.DirEntry) -> dict[str, Any] | None:
    """One entry: name, kind (file, directory, symlink, other) and size (files only); None if unlistable."""
    if not is_utf8(entry.name):
        return None  # a name that is not UTF-8 could not be sent back, nor named by a client
    try:
        if entry.is_symlink():
            kind, size = "symlink", None
        elif entry.is_dir(follow_symlinks=False):
            kind, size = "directory", None
        elif entry.is_file(follow_symlinks=False):
            kind, size = "file", entry.stat(follow_symlinks=False).st_size
        else:
            kind, size = "other", None
    except OSError:
        return None  # removed while the scan ran
    return {"name": entry.name, "kind": kind, "size": size}
