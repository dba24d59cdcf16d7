"""Log lines formatted and written off the event loop: a queue in front, one writer thread behind.

The event loop only hands each record to a queue (settings.LOGGING's `queue` handler); a
daemon thread formats what has queued and writes it in one call. What is logged at WARNING
and above waits until it is written (with everything queued before it), so an error line is
on disk, in order, before the code that logged it goes on. Nothing is lost at exit: the
handler's close() (logging.shutdown, or multiprocessing's finalizers in a worker process
such as granian's) writes what is queued, and a record logged after that is written at once.
Python 3.12's dictConfig `queue_handler` key would do the wiring, but not on 3.11.
"""

import contextlib
import logging
import multiprocessing.util
import os
import queue
import sys
import threading
import time
from typing import TextIO

# How long a WARNING (or a stop) waits for the writer before writing itself.
WAIT_SECONDS = 5.0


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
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
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
            self.queue.put(record)
            return
        written = threading.Event()
        self.queue.put((record, written))
        if not written.wait(WAIT_SECONDS):
            self.write([record])  # the writer is stuck: better a line out of order than none

    def writer_start(self) -> None:
        self.queue = queue.SimpleQueue()
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self.writer_loop, name="wss-log-writer", daemon=True)
        self.thread.start()
        # A worker process (granian's) ends through multiprocessing, which runs its finalizers
        # but not atexit: write what is queued there too. logging.shutdown covers the rest.
        multiprocessing.util.Finalize(self, self.close, exitpriority=100)

    def writer_loop(self) -> None:
        """Take everything queued, format it, write it in one call; until told to stop."""
        while True:
            batch = [self.queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self.queue.get_nowait())
            records, waiting, stop = [], [], False
            for item in batch:
                if isinstance(item, _Stop):
                    stop = True
                elif isinstance(item, tuple):  # (record or None for a flush, its Event)
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
        self.queue.put((None, written))
        written.wait(WAIT_SECONDS)

    def close(self) -> None:
        """Write what is queued and stop the writer; later records are written at once."""
        if not self.closed and self.thread is not None and self.pid == os.getpid() and self.thread.is_alive():
            self.queue.put(_Stop())
            self.thread.join(WAIT_SECONDS)
        self.closed = True
        super().close()
