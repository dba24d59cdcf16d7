"""Log lines formatted and written off the event loop: the standard library's QueueHandler and QueueListener.

The caller only puts the record on a queue; the listener's thread formats it and writes it
to the stream. Nothing the caller does waits for a write, whatever the level. The listener
takes what has queued in batches and writes each batch in one call: a put wakes it only
when BATCH records wait or a record is a WARNING or above; otherwise it comes every
WRITE_SECONDS. Waking it for each line, and writing each line on its own, cost the
event loop a thread switch per line: about a fifth of a churned session's CPU with the
three INFO event lines on (docs/performance.md). What is queued is written at exit:
`close()` (logging.shutdown, or multiprocessing's finalizers in a worker process) stops
the listener once it has written everything, and a record logged after that is written at
once. A forked child starts a listener of its own.
"""

import collections
import logging
import logging.handlers
import multiprocessing.util
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

# INFO lines reach the log within WRITE_SECONDS, or as soon as BATCH of them wait.
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


class BatchQueue:
    """The queue between the QueueHandler and its QueueListener, which it wakes only for a batch.

    `get` calls `idle` before it waits, so what the listener took is written before it sleeps.
    """

    def __init__(self, idle: Callable[[], None]) -> None:
        self.items: collections.deque = collections.deque()
        self.wake = threading.Event()
        self.idle = idle

    def put_nowait(self, item: Any) -> None:
        # deque.append is atomic and wakes nobody; the sentinel (None) and warnings wake the listener.
        self.items.append(item)
        if item is None or item.levelno >= logging.WARNING or len(self.items) >= BATCH:
            self.wake.set()

    def get(self, block: bool = True) -> Any:
        while True:
            try:
                return self.items.popleft()
            except IndexError:
                if not block:
                    raise queue.Empty from None
            self.idle()
            self.wake.wait(WRITE_SECONDS)
            self.wake.clear()


class BatchedStreamHandler(logging.StreamHandler):
    """A StreamHandler that keeps its formatted lines until flushed, then writes them in one call."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:
            lines, self.lines = self.lines, []
            if getattr(self.stream, "closed", False):
                return  # at exit, after whoever owned the stream closed it: nowhere to write
            if lines:
                try:
                    self.stream.write("".join(lines))
                except Exception:
                    self.handleError(logging.makeLogRecord({"msg": "(log lines lost)"}))
            super().flush()


class ThreadedStreamHandler(logging.handlers.QueueHandler):
    """A QueueHandler whose QueueListener writes to `stream` (stderr by default) on its own thread."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.target = BatchedStreamHandler(stream)
        super().__init__(BatchQueue(self.target.flush))
        self.listener: logging.handlers.QueueListener | None = None
        self.pid = 0
        self.closed = False

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        """The formatter belongs to the stream handler behind the queue: records are formatted on its thread."""
        self.target.setFormatter(fmt)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as it is: the stdlib's prepare formats on the caller's thread, to pickle for another process.

        This queue stays in the process, so only `msg % args` is merged here, while the
        arguments are what they were when logged.
        """
        if record.args:
            record.msg, record.args = record.getMessage(), None
        return record

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record; after close(), write it at once."""
        if self.closed:
            self.target.handle(record)
            self.target.flush()
            return
        if self.pid != os.getpid():  # the first record, or a forked child: the listener did not come along
            self.listener_start()
        super().emit(record)

    def listener_start(self) -> None:
        self.queue = BatchQueue(self.target.flush)
        self.pid = os.getpid()
        self.listener = logging.handlers.QueueListener(self.queue, self.target)
        self.listener.start()
        # A worker process (multiprocessing's) ends without atexit but runs its finalizers:
        # write what is queued there too. logging.shutdown covers every other exit.
        multiprocessing.util.Finalize(self, self.close, exitpriority=100)

    def flush(self) -> None:
        """Wait until everything queued so far is written."""
        with self.lock:  # records logged meanwhile wait in the queue for the restarted listener
            if self.listener is not None and self.pid == os.getpid() and not self.closed:
                self.listener.stop()
                self.target.flush()  # the listener stops at the sentinel, before it is idle again
                self.listener.start()

    def close(self) -> None:
        """Write what is queued and stop the listener; later records are written at once."""
        with self.lock:
            if self.closed:
                return
            running = self.listener is not None and self.pid == os.getpid()
            self.closed = True
        if running:
            self.listener.stop()
        self.target.flush()
        super().close()
