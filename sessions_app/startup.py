"""Checks when a server imports the ASGI application: daphne, uvicorn, or any other.

`manage.py` runs Django's system checks; servers do not. `startup_check()`, called by
`wssproject/asgi.py`, runs them at import: an error prints a clear message and stops the
process (exit status 3) before it serves anything; warnings are printed and start goes on.
"""

import os
import sys
from collections.abc import Mapping, Sequence

from django.core import checks

EXIT_STATUS = 3  # distinct from a crash (1) and a usage error (2)


def server_proxy_header_problem(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """Whether the server was told to believe X-Forwarded-For from any peer (argv of daphne, uvicorn)."""
    program = os.path.basename(argv[0]) if argv else ""
    options = list(argv[1:])
    if program == "daphne" and "--proxy-headers" in options:
        return (
            "daphne --proxy-headers takes X-Forwarded-For from every peer, so any client could forge its "
            "address (and pass the /metrics allowlist)."
        )
    if program == "uvicorn" and "--no-proxy-headers" not in options:
        allowed = environ.get("FORWARDED_ALLOW_IPS", "")
        for index, option in enumerate(options):
            if option == "--forwarded-allow-ips" and index + 1 < len(options):
                allowed = options[index + 1]
            elif option.startswith("--forwarded-allow-ips="):
                allowed = option.partition("=")[2]
        if "*" in [entry.strip() for entry in allowed.split(",")]:
            return (
                "uvicorn trusts X-Forwarded-For from every peer (--forwarded-allow-ips / FORWARDED_ALLOW_IPS "
                "is '*'), so any client could forge its address."
            )
    return None


def startup_check(stream=None) -> None:
    """Run the system checks; print warnings, and exit with a clear message on any error."""
    stream = stream or sys.stderr
    from .apps import check_unrestricted

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
