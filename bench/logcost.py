"""`python -m bench.logcost`: what one INFO event line costs, on the calling thread and in all.

Sets Django up with the project's settings (WSS_LOG_LEVEL as in the environment), logs
N `connect` events through sessions_app.events and prints the calling thread's CPU per
line (what the event loop pays) and the whole process's (the writer thread too). Send
stderr to a file: the lines are written there.

    WSS_LOG_LEVEL=INFO .venv/bin/python -m bench.logcost 2>/dev/null
    WSS_LOG_LEVEL=WARNING .venv/bin/python -m bench.logcost 2>/dev/null   # lines off
"""

import logging
import os
import sys
import time


def main(count: int = 20_000) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wssproject.settings")
    import django

    django.setup()
    from sessions_app import events

    scope = {"client": ("127.0.0.1", 5555), "path": "/ws"}
    process, thread = time.process_time(), time.thread_time()
    for _ in range(count):
        events.connected(scope)
    own = time.thread_time() - thread
    for handler in logging.getLogger("sessions_app").handlers:
        handler.flush()  # the writer's work counts too
    total = time.process_time() - process
    name = type(logging.getLogger("sessions_app").handlers[0]).__name__
    print(f"{name}: calling thread {own / count * 1e6:.1f} µs/line, in all {total / count * 1e6:.1f} µs/line")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
