"""The product's shape: its state lives in one object and its modules import one another one way."""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.path_independent

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = ["sessions_app", "wssproject", "workspace_files"]


def product_modules() -> dict[str, ast.Module]:
    """Every product module's syntax tree, by dotted name (migrations excluded: Django writes them)."""
    modules = {}
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def runtime_nodes(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for type hints only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for orelse in node.orelse for n in [orelse, *runtime_nodes(orelse)])
            continue
        yield node
        yield from runtime_nodes(node)


def imported_modules(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The product modules `name` imports when it runs, function-local imports included."""
    package = name if name in PRODUCT else name.rpartition(".")[0]
    found = set()
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {module for module in found if module in known and module != name}


def test_no_module_keeps_process_state_in_a_global_statement():
    offenders = [
        f"{name}:{node.lineno}"
        for name, tree in product_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Global)
    ]
    assert not offenders, f"process state belongs on sessions_app.process.ProcessState: {offenders}"


def test_the_modules_import_one_another_without_a_circle():
    modules = product_modules()
    graph = {name: imported_modules(name, tree, set(modules)) for name, tree in modules.items()}
    # Package __init__ modules are run on the way to any submodule: not an edge of their own.
    graph = {name: {m for m in edges if m not in PRODUCT} for name, edges in graph.items()}
    circles = []

    def visit(name: str, path: list[str], done: set[str]) -> None:
        if name in path:
            circles.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        for imported in sorted(graph[name]):
            visit(imported, [*path, name], done)
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        visit(name, [], done)
    assert not circles, "import circles: " + "; ".join(" -> ".join(circle) for circle in circles)


@pytest.mark.parametrize("module", ["sessions_app.live", "sessions_app.activity"])
def test_the_graph_sees_function_local_imports(module):
    """The circle check reads imports inside functions too (the kind that hid a circle before)."""
    modules = product_modules()
    assert "sessions_app.process" in imported_modules(module, modules[module], set(modules))
