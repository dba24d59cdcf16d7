"""The end of a connection: a resumable session ends only on the client's own close 1000, else it is detached."""

import pytest

from sessions_app.release import session_ends_with


@pytest.mark.parametrize(
    ("close_code", "closing_error", "ends"),
    [
        (1000, None, True),  # the client said goodbye
        (1001, None, False),  # going away: a page reload, a laptop lid
        (1006, None, False),  # dropped
        (1011, None, False),  # a keepalive timeout
        (1000, "invalid_json", False),  # the server closed after a fatal error; the client echoed
        (4503, "server_shutting_down", False),
    ],
)
def test_a_resumable_session_ends_only_on_the_clients_own_close_1000(close_code, closing_error, ends):
    assert session_ends_with(close_code, closing_error=closing_error) is ends
