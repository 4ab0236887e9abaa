"""The layout rules, read from the source with ``ast`` (every import counts, at module level or inside a function):

- no import cycles among the project's modules (``pathvlm``, ``train``, ``serve``, ``evals``);
- the library (``pathvlm``) never imports the apps (``train``, ``serve``, ``evals``). The one exception is
  the command-line front end, ``pathvlm.cli``, which dispatches to the apps: it may import them only inside
  the function that runs a command, so ``import pathvlm.cli`` and ``pathvlm --help`` load no app (checked
  in a fresh interpreter too);
- the apps never import ``pathvlm.cli``: what they share with it lives in the library (``pathvlm.formatting``).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = "pathvlm"
APPS = ("train", "serve", "evals")
CLI = "pathvlm.cli"


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the project module imported (the deepest one that exists)
    line: int
    in_function: bool


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    mods = {}
    for pkg in (LIBRARY, *APPS):
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _resolve(name: str, mods) -> str | None:
    """The deepest project module ``name`` denotes (``a.b.func`` -> ``a.b``), or None for third-party code."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(node, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join(pkg + ([node.module] if node.module else []))
        return [f"{base}.{a.name}" for a in node.names] or [base]
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]  # importlib.import_module("train.x") is an import too
    return []


def project_imports(mods: dict[str, Path]) -> list[Import]:
    found = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))

        def visit(node, in_function):
            for name in _imported_names(node, module, path.name == "__init__.py"):
                target = _resolve(name, mods)
                if target and target != module:
                    found.append(Import(module, target, node.lineno, in_function))
            inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for child in ast.iter_child_nodes(node):
                visit(child, inside)

        visit(tree, False)
    return found


def import_cycles(mods: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = {m: sorted({i.target for i in imports if i.importer == m}) for m in mods}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            connect(v)
    return cycles


def _top(module: str) -> str:
    return module.split(".")[0]


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layout_violations(root: Path = ROOT) -> list[str]:
    mods = project_modules(root)
    imports = project_imports(mods)
    problems = [f"import cycle: {' <-> '.join(c)}" for c in import_cycles(mods, imports)]
    for i in imports:
        where = f"{mods[i.importer].relative_to(root)}:{i.line}"
        if _top(i.importer) == LIBRARY and _top(i.target) in APPS:
            if not _in(i.importer, CLI):
                problems.append(f"{where}: the library module {i.importer} imports the app module {i.target}")
            elif not i.in_function:
                problems.append(f"{where}: {i.importer} imports the app module {i.target} at module level "
                                "(import it inside the command's run function)")
        if _top(i.importer) in APPS and _in(i.target, CLI):
            problems.append(f"{where}: the app module {i.importer} imports {i.target} (command-line internals); "
                            "move what it needs into the library")
    return problems


def test_no_import_cycles_and_the_library_never_imports_the_apps():
    problems = layout_violations()
    assert not problems, "layout rules broken:\n" + "\n".join(problems)


def test_the_checker_finds_cycles_upward_and_cli_imports(tmp_path):
    """The same rules on a planted tree: each kind of violation is reported (the checker can fail)."""
    files = {
        "pathvlm/__init__.py": "",
        "pathvlm/good.py": "import os\nfrom pathvlm import formatting\n",
        "pathvlm/formatting.py": "",
        "pathvlm/bad.py": "def f():\n    from train.loop import step\n",
        "pathvlm/cli/__init__.py": "import importlib\nimportlib.import_module('serve.app')\n",
        "pathvlm/cli/cmd_ok.py": "def run(args):\n    from evals.runner import run_eval\n",
        "train/__init__.py": "",
        "train/loop.py": "from .report import draw\n",
        "train/report.py": "def draw():\n    from train.loop import step\n",
        "serve/__init__.py": "",
        "serve/app.py": "from pathvlm.cli.common import table\n",
        "evals/__init__.py": "",
        "evals/runner.py": "from pathvlm.good import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "pathvlm/cli/common.py").write_text("")
    problems = layout_violations(tmp_path)
    assert "import cycle: train.loop <-> train.report" in problems
    assert any("the library module pathvlm.bad imports the app module train.loop" in p for p in problems)
    assert any("pathvlm.cli imports the app module serve.app at module level" in p for p in problems)
    assert any("the app module serve.app imports pathvlm.cli.common" in p for p in problems)
    assert not any("cmd_ok" in p or "evals.runner" in p or "pathvlm.good" in p for p in problems)
    assert len(problems) == 4, problems


def test_the_command_line_loads_no_app_until_a_command_runs():
    code = ("import sys; from pathvlm.cli import make_parser; make_parser().format_help(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {APPS!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"pathvlm --help imported app modules: {out.stdout}"
