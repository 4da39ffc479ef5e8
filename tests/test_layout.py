"""The package's rules of thumb, checked: no import cycles between modules, and no module over ~400 lines."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edge_electra"
MAX_LINES = 420


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["edge_electra", *path.relative_to(PACKAGE).with_suffix("").parts]
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def top_level_imports(path: Path, known: dict) -> set[str]:
    """Modules of the package that `path` imports when it is imported (not inside functions)."""
    deps = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edge_electra"):
            submodules = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
            deps |= submodules if len(submodules) == len(node.names) else submodules | {node.module}
        elif isinstance(node, ast.Import):
            deps |= {a.name for a in node.names if a.name.startswith("edge_electra")}
    return deps & known.keys()


def test_no_import_cycles():
    known = modules()
    graph = {name: top_level_imports(path, known) - {name} for name, path in known.items()}
    done, cycles = set(), []

    def visit(name, stack):
        for dep in graph[name]:
            if dep in stack:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, stack + [dep])
        done.add(name)

    for name in graph:
        if name not in done:
            visit(name, [name])
    assert cycles == []


def test_no_module_over_the_size_rule():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
