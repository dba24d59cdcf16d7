"""Pure tests of workspace resolution against the filesystem: no database, no event loop."""

import os

import pytest

from sessions_app.errors import InvalidRequest, WorkspaceForbidden, WorkspaceNotFound
from sessions_app.workspaces import is_within, roots_check, workspace_resolve


def test_existing_directory_resolves_to_its_real_path(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    assert workspace_resolve(str(tmp_path / "link")) == str(target.resolve())
    assert workspace_resolve(str(tmp_path / "real" / ".." / "real")) == str(target.resolve())


def test_missing_path_and_file_are_not_found(tmp_path):
    (tmp_path / "file").write_text("x")
    for path in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(WorkspaceNotFound):
            workspace_resolve(str(path))


def test_symlink_loop_is_not_found(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(WorkspaceNotFound):
        workspace_resolve(str(tmp_path / "a"))


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "ws"
    (root / "project").mkdir(parents=True)
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    return root


def test_inside_root_is_allowed(root):
    assert workspace_resolve(str(root / "project"), roots=[str(root)]) == str(root / "project")
    assert workspace_resolve(str(root), roots=[str(root)]) == str(root)


@pytest.mark.parametrize("relative", ["../ws-evil", "project/../../outside", "escape", "../outside/missing"])
def test_paths_resolving_outside_the_root_are_forbidden(root, relative):
    with pytest.raises(WorkspaceForbidden):
        workspace_resolve(os.path.join(str(root), relative), roots=[str(root)])


def test_shared_prefix_sibling_is_not_inside():
    assert not is_within("/srv/ws-evil", "/srv/ws")
    assert is_within("/srv/ws/a", "/srv/ws")
    assert is_within("/srv/ws", "/srv/ws")


def test_missing_path_inside_root_is_not_found(root):
    with pytest.raises(WorkspaceNotFound):
        workspace_resolve(str(root / "nope"), roots=[str(root)])


def test_roots_check_names_missing_and_relative_roots(tmp_path):
    assert roots_check([str(tmp_path)]) == []
    problems = roots_check([str(tmp_path / "missing"), "relative"])
    assert len(problems) == 2
    assert "does not exist" in problems[0]
    assert "not an absolute path" in problems[1]


def test_a_missing_root_fails_the_system_checks_at_start_up(settings, tmp_path):
    from django.core import checks

    settings.WSS_WORKSPACE_ROOTS = [str(tmp_path / "gone")]
    errors = [message for message in checks.run_checks(tags=["wss"]) if message.id == "wss.E001"]
    assert len(errors) == 1
    assert "gone" in errors[0].msg
    settings.WSS_WORKSPACE_ROOTS = [str(tmp_path)]
    assert not [message for message in checks.run_checks(tags=["wss"]) if message.id == "wss.E001"]


def test_a_directory_whose_real_path_is_not_utf8_is_refused(tmp_path):
    undecodable = os.path.join(os.fsencode(tmp_path), b"caf\xe9")  # Latin-1 on disk
    os.mkdir(undecodable)
    (tmp_path / "link").symlink_to(os.fsdecode(undecodable))
    with pytest.raises(InvalidRequest):
        workspace_resolve(str(tmp_path / "link"))
