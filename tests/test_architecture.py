"""The rules ARCHITECTURE.md states: no import cycles, layers import downward only, no module past
520 lines, one module per runtime package, no printing outside the CLI, and a module table that
names every module."""

import ast
import contextlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "shufflenet"
# Layer of each top-level module or package (ARCHITECTURE.md's diagram); higher imports lower.
LAYERS = {
    "__main__": 6,
    "cli": 5,
    "train": 4,
    "speed": 4,
    "predict": 4,
    "stream": 4,
    "export": 3,
    "evaluate": 3,
    "deploy": 2,
    "convert": 2,  # foreign checkpoints in: the hub converts with it
    "mmpretrain_keys": 2,
    "hub": 2,  # published weights by name; the public API exports it
    "models": 1,
    "weights": 1,
    "data": 1,
    "folders": 1,
    "complexity": 1,
    "plots": 1,
    "shufflenet": 2,  # the public API: re-exports models, weights, complexity, hub
    "ops": 2,  # shufflenet.ops: re-exports models.ops
    "preprocessing": 0,
    "device": 0,
    "runtimes": 0,
    "verification": 0,
    "timer": 0,
    "io": 0,
    "limits": 0,
    "cpu": 0,
}
# The one allowed upward import: names that moved to a higher layer stay importable from their
# documented old place through that package's module-level ``__getattr__``, imported on first
# use only (tests/test_train_fast.py checks that importing the package does not import them).
MOVED_NAMES = {("shufflenet.deploy", "shufflenet.train.fast")}


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
        if _top(dep) != _top(module)
        and LAYERS[_top(dep)] > LAYERS[_top(module)]
        and (module, dep) not in MOVED_NAMES
    ]
    assert not upward, upward


def test_no_module_is_over_520_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p, _ in _modules().values()}
    assert max(sizes.values()) <= 520, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


# -- one module per runtime package ----------------------------------------------------------
# runtime -> (does this imported module name belong to it, the one module that may import it)
RUNTIMES = {
    "ONNX Runtime": (lambda m: m == "onnxruntime", "runtimes"),  # its quantization tools aside
    "OpenVINO": (lambda m: m.split(".")[0] == "openvino", "runtimes"),
    "LiteRT": (lambda m: m == "ai_edge_litert.interpreter", "export.litert"),
    "ExecuTorch": (
        lambda m: m.startswith(("executorch.runtime", "executorch.extension.pybindings")),
        "export.executorch",
    ),
    "MNN": (lambda m: m.split(".")[0] == "MNN", "export.mnn"),
    "ncnn": (lambda m: m == "ncnn", "export.ncnn"),
}


def _module_names(tree: ast.AST) -> set[str]:
    """The modules ``tree`` imports, names the module of a ``require``/``Extra``/
    ``import_module`` call, or imports in a script it holds as a string."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            position = {"require": 2, "Extra": 2, "import_module": 0}.get(called)
            if position is None:
                continue
            args = [*node.args[position : position + 1]]
            args += [k.value for k in node.keywords if k.arg == "module"]
            names |= {a.value for a in args if isinstance(a, ast.Constant)}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            script = "import " in node.value and "\n" in node.value
            with contextlib.suppress(SyntaxError):
                names |= _module_names(ast.parse(node.value)) if script else set()
    return {n for n in names if isinstance(n, str)}


def _importers(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Runtime -> the modules under ``root`` that import it."""
    found: dict[str, set[str]] = {runtime: set() for runtime in RUNTIMES}
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        names = _module_names(ast.parse(path.read_text(encoding="utf-8")))
        for runtime, (belongs, _) in RUNTIMES.items():
            if any(belongs(name) for name in names):
                found[runtime].add(module)
    return found


def test_each_runtime_package_is_imported_by_one_module():
    expected = {runtime: {module} for runtime, (_, module) in RUNTIMES.items()}
    assert _importers() == expected


# -- the library never prints ----------------------------------------------------------------
# Where writing to standard output is the module's job: the timing process answers its parent
# on its standard output, a pipe.
MAY_WRITE = {"speed/worker.py"}


def _writes(tree: ast.AST) -> list[str]:
    """What in ``tree`` prints or draws: ``print``, tqdm, ``sys.stdout.write``/``sys.stderr.write``
    (a flush, as around native code's output, writes nothing of its own)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
            found.append(f"print at line {node.lineno}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] == "tqdm" for n in names):
                found.append(f"tqdm imported at line {node.lineno}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "write"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("stdout", "stderr")
            and getattr(node.value.value, "id", None) == "sys"
        ):
            found.append(f"sys.{node.value.attr}.write at line {node.lineno}")
    return found


def test_only_the_cli_prints():
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("cli/") or relative in MAY_WRITE or relative == "__main__.py":
            continue
        found = _writes(ast.parse(path.read_text(encoding="utf-8")))
        if found:
            offenders[relative] = found
    assert not offenders, offenders


def test_the_print_check_finds_what_it_looks_for():
    code = "import sys\nfrom tqdm import tqdm\nprint(1)\nsys.stderr.write('x')\n"
    assert len(_writes(ast.parse(code))) == 3


# -- the module table ------------------------------------------------------------------------
def _table_rows() -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of ARCHITECTURE.md's module table."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:3] for line in table.splitlines() if line.startswith("| `")]
    return [(first.strip(), second.strip()) for first, second in rows]


def test_the_module_table_names_every_module():
    rows = _table_rows()
    missing = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__"):
            continue
        if len(parts) == 1:
            named = any(f"`{parts[0]}`" in first for first, _ in rows)
        else:
            package, stem = "/".join(parts[:-1]), parts[-1]
            named = any(
                f"`{package}/`" in first and re.search(rf"`{stem}`", second)
                for first, second in rows
            )
        if not named:
            missing.append("/".join(parts))
    assert not missing, missing


def test_test_names_are_unique_across_modules():
    seen: dict[str, str] = {}
    repeated = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                if node.name in seen:
                    repeated.append((node.name, seen[node.name], path.name))
                seen.setdefault(node.name, path.name)
    assert not repeated, repeated


def test_no_test_module_imports_another():
    tests = {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    imports = [
        (path.name, name)
        for path in (ROOT / "tests").glob("*.py")
        for name in _module_names(ast.parse(path.read_text(encoding="utf-8")))
        if name.split(".")[0] in tests
    ]
    assert not imports, imports
