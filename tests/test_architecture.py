"""The structure ARCHITECTURE.md describes: no import cycles, layers import downward only, and
no module grows past ~500 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "shufflenet"
# Layer of each top-level module or package (ARCHITECTURE.md's diagram); higher imports lower.
LAYERS = {
    "__main__": 6,
    "cli": 5,
    "train": 4,
    "speed": 4,
    "predict": 4,
    "export": 3,
    "convert": 3,
    "evaluate": 3,
    "deploy": 2,
    "models": 1,
    "weights": 1,
    "data": 1,
    "folders": 1,
    "complexity": 1,
    "plots": 1,
    "shufflenet": 2,  # the public API: re-exports models, weights, complexity
    "preprocessing": 0,
    "device": 0,
    "runtimes": 0,
    "verification": 0,
    "timer": 0,
    "io": 0,
    "limits": 0,
    "cpu": 0,
}


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(["shufflenet", *(parts[:-1] if is_package else parts)])
        modules[name] = (path, is_package)
    return modules


def _import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, lazy (function-level) imports included."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
            graph[name] |= (found or {target} & set(modules)) - {name}
    return graph


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else "shufflenet"


def test_no_import_cycles():
    graph = _import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module, path):
        state[module] = 1
        for dep in graph[module]:
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_layers_import_downward_only():
    graph = _import_graph()
    assert {_top(m) for m in graph} == set(LAYERS)  # every module has a layer
    upward = [
        (module, dep)
        for module, deps in graph.items()
        for dep in deps
        if _top(dep) != _top(module) and LAYERS[_top(dep)] > LAYERS[_top(module)]
    ]
    assert not upward, upward


def test_no_module_is_over_520_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p, _ in _modules().values()}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
