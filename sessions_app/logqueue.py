"""Log lines formatted and written off the event loop: the standard library's QueueHandler and QueueListener.

The caller only puts the record on a queue; the listener's thread formats it and writes it
to the stream. Nothing the caller does waits for a write, whatever the level. What is
queued is written at exit: `close()` (logging.shutdown, or multiprocessing's finalizers in
a worker process) stops the listener once it has written everything, and a record logged
after that is written at once. A forked child starts a listener of its own.
"""

import logging
import logging.handlers
import multiprocessing.util
import os
import queue
import time
from typing import TextIO


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


class ThreadedStreamHandler(logging.handlers.QueueHandler):
    """A QueueHandler whose QueueListener writes to `stream` (stderr by default) on its own thread."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(queue.SimpleQueue())
        self.target = logging.StreamHandler(stream)
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
            return
        if self.pid != os.getpid():  # the first record, or a forked child: the listener did not come along
            self.listener_start()
        super().emit(record)

    def listener_start(self) -> None:
        self.queue = queue.SimpleQueue()
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
                self.listener.start()

    def close(self) -> None:
        """Write what is queued and stop the listener; later records are written at once."""
        with self.lock:
            running = not self.closed and self.listener is not None and self.pid == os.getpid()
            self.closed = True
        if running:
            self.listener.stop()
        super().close()
