"""System checks at start-up: the heartbeat and the instance timeout must leave room for a late beat."""

import pytest
from django.core import checks


def heartbeat_errors() -> list[checks.CheckMessage]:
    return [message for message in checks.run_checks(tags=["wss"]) if message.id == "wss.E002"]


@pytest.mark.parametrize(
    ("heartbeat", "timeout", "refused"),
    [
        (5, 25, False),  # the defaults
        (5, 10, False),  # exactly two beats: one late beat is still tolerated
        (5, 9.9, True),  # under two beats: one late beat would get a live process reaped
        (5, 5, True),
        (0, 25, True),  # no heartbeat at all
        (-1, 25, True),
    ],
)
def test_a_timeout_under_two_heartbeats_fails_the_system_check(settings, heartbeat, timeout, refused):
    settings.WSS_HEARTBEAT_SECONDS, settings.WSS_INSTANCE_TIMEOUT_SECONDS = heartbeat, timeout
    errors = heartbeat_errors()
    assert bool(errors) is refused
    if refused:
        assert f"WSS_HEARTBEAT_SECONDS={heartbeat:g}" in errors[0].msg
        assert f"WSS_INSTANCE_TIMEOUT_SECONDS={timeout:g}" in errors[0].msg
