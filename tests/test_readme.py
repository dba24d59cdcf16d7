"""The server commands the README and the operations guide give are the ones the tests and the bench run."""

import re
import shlex

import pytest

from bench.targets import UVICORN_FAST_OPTIONS

from .servers import ROOT

pytestmark = pytest.mark.path_independent


def uvicorn_commands(text: str) -> list[list[str]]:
    """Every `.venv/bin/uvicorn ...` command in a document, its continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [shlex.split(line.split("&")[0])[1:] for line in re.findall(r"^\.venv/bin/uvicorn .*$", joined, re.M)]


@pytest.mark.parametrize("document", ["README.md", "docs/operations.md"])
def test_every_uvicorn_command_in_the_docs_is_the_fast_command(document):
    commands = uvicorn_commands((ROOT / document).read_text())
    assert commands
    for command in commands:
        assert command[: len(UVICORN_FAST_OPTIONS)] == UVICORN_FAST_OPTIONS, " ".join(command)
