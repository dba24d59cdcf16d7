"""Log lines formatted and written off the event loop: a queue in front, one writer thread behind.

The event loop only appends each record to a queue (settings.LOGGING's `console` handler);
a daemon thread comes every 0.1 s (sooner when 256 wait), formats what has queued and
writes it in one call, so a busy loop pays neither the formatting nor a thread switch per
line. What is logged at WARNING and above waits until it is written (with everything
queued before it), so an error line is in the log, in order, before the code that logged
it goes on. Nothing is lost at exit: the handler's close() (logging.shutdown, or
multiprocessing's finalizers in a worker process) writes what is queued, and a record
logged after that is written at once.
Python 3.12's dictConfig `queue_handler` key would do the wiring, but not on 3.11.
"""

import collections
import contextlib
import logging
import multiprocessing.util
import os
import sys
import threading
import time
from typing import TextIO

# How long a WARNING (or a stop) waits for the writer before writing itself.
WAIT_SECONDS = 5.0
# INFO lines reach the log within this, or as soon as BATCH of them wait.
WRITE_SECONDS = 0.1
BATCH = 256


class Formatter(logging.Formatter):
    """logging.Formatter, with the local time text made once per second rather than per line."""

    _second: tuple[int, str | None, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached_second, cached_format, text = self._second
        if second != cached_second or datefmt != cached_format:
            text = time.strftime(datefmt or self.default_time_format, self.converter(record.created))
            self._second = (second, datefmt, text)
        return text if datefmt else self.default_msec_format % (text, record.msecs)


class _Stop:
    """Tells the writer thread to write what is left and end."""


class QueueHandler(logging.Handler):
    """Hands records to a writer thread; WARNING and above wait until they are written."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stderr
        self.pending: collections.deque = collections.deque()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.closed = False
        self.write_lock = threading.Lock()

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and emit without the handler's lock: a queue needs none, and a waiting emit must not hold it."""
        passed = self.filter(record)
        if passed:
            self.emit(record)
        return bool(passed)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record (no formatting here); above INFO, wait until it is written."""
        if self.closed:
            self.write([record])
            return
        if self.pid != os.getpid():  # first record, or a forked child: the thread did not come along
            self.writer_start()
        if record.levelno < logging.WARNING:
            # deque.append is atomic and wakes nobody: the writer comes every WRITE_SECONDS,
            # or sooner once BATCH records wait, so a busy loop pays no thread switch per line.
            self.pending.append(record)
            if len(self.pending) >= BATCH:
                self.wake.set()
            return
        written = threading.Event()
        self.pending.append((record, written))
        self.wake.set()
        if not written.wait(WAIT_SECONDS):
            self.write([record])  # the writer is stuck: better a line out of order than none

    def writer_start(self) -> None:
        self.pending = collections.deque()
        self.wake = threading.Event()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self.writer_loop, name="wss-log-writer", daemon=True)
        self.thread.start()
        # A worker process (multiprocessing's) ends without atexit but runs its finalizers:
        # write what is queued there too. logging.shutdown covers every other exit.
        multiprocessing.util.Finalize(self, self.close, exitpriority=100)

    def writer_loop(self) -> None:
        """Every WRITE_SECONDS, or when woken: format everything queued, write it in one call; until told to stop."""
        while True:
            self.wake.wait(WRITE_SECONDS)
            self.wake.clear()
            records, waiting, stop = [], [], False
            with contextlib.suppress(IndexError):
                while True:
                    item = self.pending.popleft()
                    if isinstance(item, _Stop):
                        stop = True
                    elif isinstance(item, tuple):  # (record, or None for a flush; its Event)
                        if item[0] is not None:
                            records.append(item[0])
                        waiting.append(item[1])
                    else:
                        records.append(item)
            self.write(records)
            for event in waiting:
                event.set()
            if stop:
                return

    def write(self, records: list[logging.LogRecord]) -> None:
        """Format and write records in one call; a record that fails goes through handleError."""
        lines = []
        for record in records:
            try:
                lines.append(self.format(record) + "\n")
            except Exception:
                self.handleError(record)
        if not lines:
            return
        with self.write_lock:  # the writer thread, and a caller writing itself after close()
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except Exception:
                self.handleError(records[-1])

    def flush(self) -> None:
        """Wait until everything queued so far is written."""
        if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():
            return
        written = threading.Event()
        self.pending.append((None, written))
        self.wake.set()
        written.wait(WAIT_SECONDS)

    def close(self) -> None:
        """Write what is queued and stop the writer; later records are written at once."""
        if not self.closed and self.thread is not None and self.pid == os.getpid() and self.thread.is_alive():
            self.pending.append(_Stop())
            self.wake.set()
            self.thread.join(WAIT_SECONDS)
        self.closed = True
        super().close()
