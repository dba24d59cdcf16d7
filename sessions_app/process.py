"""The server process's state: who it is, its registration and lease, its connections, tasks, threads and counts.

One `ProcessState` per process, reached through `process_state()` only. A forked child
gets a fresh identity at the fork, before anyone reads it, so a child never writes rows
under its parent's boot id. Tests get a fresh one from the `fresh_process` fixture.
"""

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """Who this server process is: a fresh boot id at every start."""

    boot_id: uuid.UUID
    host: str
    pid: int
    boot_text: str = field(default="", compare=False)  # str(boot_id), made once: every event line carries it

    @classmethod
    def new(cls) -> "ProcessIdentity":
        """A fresh identity for the process running now."""
        boot_id = uuid.uuid4()
        return cls(boot_id=boot_id, host=socket.gethostname(), pid=os.getpid(), boot_text=str(boot_id))


class Registration(StrEnum):
    """Whether this process's ServerInstance row is known to exist."""

    UNREGISTERED = "unregistered"  # not yet, or lost (a fork, a reaper): the next write registers first
    REGISTERED = "registered"
    RETIRED = "retired"  # shutting down: a late write must fail rather than bring the instance back


class Phase(StrEnum):
    """Where the process is in its life: the lifecycle's start and stop move it."""

    IDLE = "idle"  # not started (tests, a bare ASGI app)
    RUNNING = "running"  # the heartbeat runs
    STOPPING = "stopping"  # new connections are refused


class _Writer(Protocol):
    def call(self, function: Callable[[], T]) -> "asyncio.Future[T]": ...


class InFlight:
    """Sessions whose insert or resume was submitted and whose caller has not yet got the answer.

    The reconciler must not take their committed rows for orphans.
    """

    def __init__(self) -> None:
        self._ids: set[uuid.UUID] = set()

    @contextlib.contextmanager
    def writing(self, session_id: uuid.UUID) -> Iterator[None]:
        """Count `session_id` as in flight for the duration of the block."""
        self._ids.add(session_id)
        try:
            yield
        finally:
            self._ids.discard(session_id)

    def call_after_writes(self, writer: _Writer, function: Callable[[frozenset[uuid.UUID]], T]) -> "asyncio.Future[T]":
        """Queue `function(writes in flight)` on `writer`, snapshot and enqueue in one step.

        The writer runs calls after everything queued before them, so no write can slip
        between the snapshot and the call.
        """
        snapshot = frozenset(self._ids)
        return writer.call(lambda: function(snapshot))

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(slots=True)
class RegistryNudges:
    """The admin watchers' nudges from this process (live.py): the one pending, and what was sent."""

    pending_on: asyncio.AbstractEventLoop | None = None  # the loop whose timer will send the pending nudge
    sending: set[asyncio.Task] = field(default_factory=set)  # the loop keeps only weak references to tasks
    sync_failed_at: float | None = None  # time.monotonic() of the last failure of a synchronous nudge
    sent: int = 0


@dataclass(slots=True)
class ActivityCounts:
    """Sessions opened and ended per minute by this process, not yet known written (activity.py)."""

    by_minute: dict[int, list[int]] = field(default_factory=dict)  # epoch minute -> [opened, ended]
    pruned_at: float = 0.0  # time.monotonic() of this process's last prune of old minutes


class ProcessState:
    """Everything this process keeps about itself; one per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # registration is written from the writer and the lifecycle threads
        self.identity = ProcessIdentity.new()
        self.registration = Registration.UNREGISTERED
        self.phase = Phase.IDLE
        # Until when (time.monotonic()) this instance may hold sessions: its last good heartbeat plus
        # the instance timeout minus one heartbeat. None while no heartbeat runs (tests, a bare ASGI app).
        self.lease_until: float | None = None
        self.inserts_in_flight = InFlight()
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.heartbeat: asyncio.Task | None = None
        self.lease_timer: asyncio.TimerHandle | None = None
        self.fencing: asyncio.Task | None = None  # kept: the loop holds only weak references to tasks
        self.renewal: asyncio.Future | None = None  # the on-demand lease renewal under way, if any
        self.predecessors_reaped = False
        # time.monotonic() at which the current run of good heartbeats began (None: the last one failed).
        self.beats_good_since: float | None = None
        self.lifecycle_executor: Any = None  # made on first use by the heartbeat module
        self._resolve_pool: ThreadPoolExecutor | None = None
        self._resolve_pool_size = 0
        self.nudges = RegistryNudges()
        self.activity = ActivityCounts()

    # --- Identity and registration -----------------------------------------------------------

    def _forked(self) -> None:
        """In a forked child, the only thread: a fresh boot id, and its instance row does not exist yet."""
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        self.identity = ProcessIdentity.new()
        if self.registration is Registration.REGISTERED:
            self._move(Registration.UNREGISTERED)

    def registration_set(self, registration: Registration) -> None:
        """Move to `registration` (a retired process stays retired)."""
        with self._lock:
            if self.registration is not Registration.RETIRED or registration is Registration.RETIRED:
                self._move(registration)

    def _move(self, registration: Registration) -> None:
        if registration is not self.registration:
            logger.debug("instance %s: %s -> %s", self.identity.boot_id, self.registration, registration)
            self.registration = registration

    # --- The lease ---------------------------------------------------------------------------

    def lease_renew(self, until: float | None) -> None:
        """Set until when (a time.monotonic() value) this instance may hold sessions; None: no lease kept."""
        was_fenced = self.fenced()
        self.lease_until = until if until is None or self.lease_until is None else max(until, self.lease_until)
        if was_fenced and not self.fenced():
            logger.debug("lease renewed: sessions are accepted again")

    def lease_expire(self) -> None:
        """End the lease now: new sessions are refused until it is renewed."""
        self.lease_until = time.monotonic()
        logger.debug("lease ended: sessions are refused until it is renewed")

    def fenced(self) -> bool:
        """Whether this instance's lease ran out: peers may reap it any moment, so it holds no sessions."""
        return self.lease_until is not None and time.monotonic() >= self.lease_until

    # --- Life --------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether this process has begun to stop: new connections are refused."""
        return self.phase is Phase.STOPPING

    def phase_set(self, phase: Phase) -> None:
        """Move the process to `phase`."""
        if phase is not self.phase:
            logger.debug("process %s: %s -> %s", self.identity.boot_id, self.phase, phase)
            self.phase = phase

    async def aclose(self) -> None:
        """Cancel this state's tasks and timer, close its threads: for tests, which play several lives."""
        for task in (self.heartbeat, self.fencing, self.renewal):
            if task is not None:
                task.cancel()
        if self.lease_timer is not None:
            self.lease_timer.cancel()
        self.heartbeat = self.fencing = self.renewal = self.lease_timer = None
        self.lease_until = None
        if self.lifecycle_executor is not None:
            executor, self.lifecycle_executor = self.lifecycle_executor, None
            await executor.aclose()
        if self._resolve_pool is not None:
            self._resolve_pool.shutdown(wait=False, cancel_futures=True)
        self.connections.clear()

    def resolve_pool(self, size: int) -> ThreadPoolExecutor:
        """The workspace resolver's bounded pool of `size` threads, made on first use (again if the size changed)."""
        with self._lock:
            if self._resolve_pool is None or self._resolve_pool_size != size:
                if self._resolve_pool is not None:
                    self._resolve_pool.shutdown(wait=False, cancel_futures=True)
                self._resolve_pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="wss-resolve")
                self._resolve_pool_size = size
            return self._resolve_pool


_state = ProcessState()


def process_state() -> ProcessState:
    """This process's state (a forked child's has its own identity already: `_forked_child`)."""
    return _state


def _forked_child() -> None:
    # Runs in the child of every os.fork() (multiprocessing's and a pre-forking server's
    # included) before control returns to Python code, so no one reads the parent's identity.
    _state._forked()


os.register_at_fork(after_in_child=_forked_child)
