"""The log writer thread: the caller never waits for a write, lines keep their order, and none is lost at exit."""

import io
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from sessions_app import logqueue
from sessions_app.logqueue import ThreadedStreamHandler

from .polling import wait_until_sync
from .servers import ROOT

pytestmark = pytest.mark.path_independent


def handler_on(stream: io.StringIO) -> tuple[logging.Logger, ThreadedStreamHandler]:
    handler = ThreadedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test_logqueue.{id(stream)}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log, handler


class BlockedStream(io.StringIO):
    """A stream whose writes wait until `release` is set: a stuck stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait(10)
        return super().write(text)


def test_a_warning_returns_at_once_while_the_stream_is_stuck_and_is_written_in_order_after():
    stream = BlockedStream()
    log, handler = handler_on(stream)
    try:
        for number in range(500):
            log.info("line %d", number)
        log.warning("the warning")  # the writer is stuck on the first line: this must not wait for it
        assert stream.getvalue() == ""
        stream.release.set()
        handler.flush()
        assert stream.getvalue().splitlines() == [f"INFO line {n}" for n in range(500)] + ["WARNING the warning"]
    finally:
        stream.release.set()
        handler.close()


def test_arguments_are_merged_when_logged_not_when_written():
    stream = BlockedStream()
    log, handler = handler_on(stream)
    try:
        fields = ["before"]
        log.info("fields %s", fields)
        fields[0] = "after"
        stream.release.set()
        handler.flush()
        assert stream.getvalue().splitlines() == ["INFO fields ['before']"]
    finally:
        stream.release.set()
        handler.close()


class CountedStream(io.StringIO):
    """A stream that counts its write calls."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_info_lines_wait_for_their_batch_and_a_warning_brings_them_out_with_it(monkeypatch):
    monkeypatch.setattr(logqueue, "WRITE_SECONDS", 30.0)  # the timer never fires within the test
    stream = CountedStream()
    log, handler = handler_on(stream)
    try:
        for number in range(100):
            log.info("line %d", number)
        time.sleep(0.3)  # a listener woken per line would have written them by now
        assert stream.getvalue() == ""
        log.warning("the warning")
        wait_until_sync(lambda: "the warning" in stream.getvalue(), 5, what="the warning written")
        assert stream.getvalue().splitlines() == [f"INFO line {n}" for n in range(100)] + ["WARNING the warning"]
        assert stream.writes == 1
    finally:
        handler.close()


def test_a_full_batch_is_written_without_waiting_for_the_timer(monkeypatch):
    monkeypatch.setattr(logqueue, "WRITE_SECONDS", 30.0)
    stream = CountedStream()
    log, handler = handler_on(stream)
    try:
        for number in range(logqueue.BATCH):
            log.info("line %d", number)
        wait_until_sync(lambda: len(stream.getvalue().splitlines()) == logqueue.BATCH, 5, what="the batch written")
        assert stream.writes <= 2  # one write per batch (two if the listener took it in two goes)
    finally:
        handler.close()


def test_close_writes_what_is_queued_and_later_records_are_written_at_once():
    stream = io.StringIO()
    log, handler = handler_on(stream)
    for number in range(2000):
        log.info("line %d", number)
    handler.close()
    assert len(stream.getvalue().splitlines()) == 2000
    log.info("after close")
    assert stream.getvalue().splitlines()[-1] == "INFO after close"


EXIT_SCRIPT = textwrap.dedent(
    """
    import logging, multiprocessing, os, sys
    os.environ["DJANGO_SETTINGS_MODULE"] = "wssproject.settings"
    os.environ["WSS_LOG_LEVEL"] = "INFO"
    import django

    def burst(tag):
        django.setup()
        log = logging.getLogger("sessions_app.test")
        for number in range(3000):
            log.info("%s %d", tag, number)

    if __name__ == "__main__":
        child = multiprocessing.get_context(sys.argv[1]).Process(target=burst, args=("child",))
        child.start()
        child.join()
        burst("parent")
    """
)


def test_no_line_is_lost_when_a_process_or_a_worker_process_exits_right_after_logging(tmp_path):
    script = tmp_path / "burst.py"
    script.write_text(EXIT_SCRIPT)
    for start_method in ("fork", "spawn"):  # granian forks its workers; spawn is the other way
        run = subprocess.run(
            [sys.executable, str(script), start_method],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        lines = run.stderr.splitlines()
        assert sum(" child " in line for line in lines) == 3000, start_method
        assert sum(" parent " in line for line in lines) == 3000, start_method
