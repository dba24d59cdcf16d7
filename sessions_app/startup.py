"""Checks when a server imports the ASGI application: daphne, uvicorn, or any other.

`manage.py` runs Django's system checks; servers do not. `startup_check()`, called by
`wssproject/asgi.py`, runs them at import: an error prints a clear message and stops the
process (exit status 3) before it serves anything; warnings are printed and start goes on.
"""

import sys

from django.core import checks

from .checks import check_unrestricted

EXIT_STATUS = 3  # distinct from a crash (1) and a usage error (2)


def startup_check(stream=None) -> None:
    """Run the system checks; print warnings, and exit with a clear message on any error."""
    stream = stream or sys.stderr
    found = checks.run_checks(include_deployment_checks=False)
    # Said at every server start, not only by `check --deploy`: an unrestricted server is the one to notice.
    found += check_unrestricted(None)
    errors = [message for message in found if message.level >= checks.ERROR and not message.is_silenced()]
    warnings = [message for message in found if checks.WARNING <= message.level < checks.ERROR]
    for message in warnings:
        stream.write(f"wss-sessions: WARNING: {message}\n")
    if errors:
        lines = "\n".join(f"  {message}" for message in errors)
        stream.write(f"wss-sessions: refusing to start, the configuration has errors:\n{lines}\n")
        stream.flush()
        raise SystemExit(EXIT_STATUS)
