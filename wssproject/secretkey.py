"""The signing key when DJANGO_SECRET_KEY is unset: generated once, kept in a private file.

Never a key known to the public: the first start writes a fresh random key to a file
(mode 0600) in the project folder, which git ignores, and every later start reads it back.
Concurrent first starts agree on one key: each writes its own temporary file and links it
into place, and the link succeeds for one of them only.
"""

import contextlib
import os
import secrets
from pathlib import Path

from django.core.management.utils import get_random_secret_key


class SecretKeyError(RuntimeError):
    """The key file cannot be read or written."""


def secret_key_load_or_create(path: Path) -> str:
    """The key stored in `path`, created with a fresh random key if the file is absent."""
    key = _read(path)
    if key is not None:
        return key
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(get_random_secret_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)  # atomic create-if-absent: one concurrent starter wins
    except OSError as error:
        raise SecretKeyError(
            f"DJANGO_SECRET_KEY is unset and the key file {path} cannot be created ({error}); "
            "set DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE to a writable place."
        ) from None
    finally:
        temporary.unlink(missing_ok=True)
    key = _read(path)
    if key is None:
        raise SecretKeyError(f"the key file {path} is empty; delete it to generate a new key")
    return key


def _read(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SecretKeyError(f"the key file {path} cannot be read ({error})") from None
    if not text:
        raise SecretKeyError(f"the key file {path} is empty; delete it to generate a new key")
    return text
