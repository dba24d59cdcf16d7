"""The process state: one per process, a fresh identity in a forked child, named registration states."""

import asyncio
import multiprocessing
import uuid

import pytest

from sessions_app import process
from sessions_app.process import Phase, ProcessState, Registration, process_state


def _child_identity(results) -> None:
    state = process_state()
    results.put((str(state.identity.boot_id), state.identity.pid, str(state.registration)))


def test_a_forked_child_gets_its_own_boot_id_and_is_not_registered(fresh_process):
    fresh_process.registration_set(Registration.REGISTERED)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_identity, args=(results,))
    child.start()
    boot_id, pid, registration = results.get(timeout=10)
    child.join(10)
    assert pid == child.pid
    assert boot_id != str(fresh_process.identity.boot_id)
    assert registration == Registration.UNREGISTERED
    assert fresh_process.registration is Registration.REGISTERED  # the parent is untouched


def test_the_accessor_returns_the_one_state(fresh_process):
    assert process_state() is fresh_process is process._state


def test_a_retired_process_stays_retired(fresh_process):
    fresh_process.registration_set(Registration.RETIRED)
    fresh_process.registration_set(Registration.REGISTERED)
    assert fresh_process.registration is Registration.RETIRED


def test_a_fresh_state_is_idle_unregistered_and_unleased():
    state = ProcessState()
    assert (state.phase, state.registration, state.fenced(), state.stopping) == (
        Phase.IDLE,
        Registration.UNREGISTERED,
        False,
        False,
    )
    assert state.identity.boot_text == str(state.identity.boot_id)


def test_a_lease_that_ran_out_fences_until_renewed():
    state = ProcessState()
    state.lease_expire()
    assert state.fenced()
    state.lease_renew(float("inf"))
    assert not state.fenced()


async def test_reconcile_sees_exactly_the_writes_in_flight_when_it_was_queued():
    class Writer:
        queued: list = []

        def call(self, function):
            self.queued.append(function)
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

    state, writer = ProcessState(), Writer()
    first, second = uuid.uuid4(), uuid.uuid4()
    with state.inserts_in_flight.writing(first):
        await state.inserts_in_flight.call_after_writes(writer, lambda in_flight: in_flight)
        with state.inserts_in_flight.writing(second):
            pass
    assert writer.queued[0]() == frozenset({first})  # run later, it still sees the snapshot
    assert len(state.inserts_in_flight) == 0


@pytest.mark.parametrize("transition", ["registration", "phase"])
def test_transitions_are_logged_at_debug(transition, caplog):
    state = ProcessState()
    with caplog.at_level("DEBUG", logger="sessions_app.process"):
        if transition == "registration":
            state.registration_set(Registration.REGISTERED)
        else:
            state.phase_set(Phase.RUNNING)
    assert "-> " in caplog.text and ("registered" in caplog.text or "running" in caplog.text)
