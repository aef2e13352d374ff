"""How src/multisk reads: no function longer than a screenful, and the import graph visible at the top of
each module."""

from __future__ import annotations

import ast
from pathlib import Path
from repo_paths import REPO


SRC = REPO / "src" / "multisk"
MAX_FUNCTION_LINES = 100

# In-function imports of the project's own modules, each with the reason it cannot sit at the top.
# Everything else imports at module level, so the import graph is what the file headers say.
#  * multisk.commands.*: `multisk --help` imports every command module to build its parser; a command
#    imports its application (torch, the models) only when it runs, so --help and argument errors stay
#    fast.
#  * (module, imported): a heavy optional dependency behind the import, or an import cycle.
DEFERRED_IMPORTS = {
    # matplotlib: only a run that writes figures needs it
    ("multisk/evaluate/run_figures.py", "multisk.evaluate.plot_primitives"),
    # torch: the HowTo100M readers and the MSR-VTT / YouCook2 converter run on numpy alone; only the
    # training collate of HowTo100M clips needs the dataset module (torch)
    ("multisk/data/formats/howto100m.py", "multisk.data.store.dataset"),
}
# Imports of the project inside functions that the owners of these files have not moved yet (each is
# free of cycles and cheap); listed so the test pins the count, to be emptied.
NOT_YET_MOVED = {
    ("multisk/train/trainer.py", "multisk.evaluate.run_figures"),  # run_figures defers matplotlib itself
    ("multisk/data/formats/howto100m.py", "multisk.data.encoders.text"),
    ("multisk/data/formats/howto100m.py", "multisk.data.encoders.word_vectors"),
}


def python_files() -> list[Path]:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50
    return files


def functions(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def long_functions(path: Path, source: str | None = None) -> list[str]:
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    return [f"{path.relative_to(SRC.parent)}:{fn.lineno} {fn.name} has {fn.end_lineno - fn.lineno + 1} lines"
            for fn in functions(tree) if fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]


def project_imports_in_functions(path: Path, source: str | None = None) -> list[tuple[str, int, str]]:
    """``(file, line, module)`` for each ``multisk`` import inside a function body (relative imports
    resolved against the file's package)."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    rel = path.relative_to(SRC.parent).as_posix()
    package = rel[: -len(".py")].split("/")[:-1]
    found = set()
    for fn in functions(tree):
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            found |= {(rel, node.lineno, n) for n in names if n == "multisk" or n.startswith("multisk.")}
    return sorted(found)


def test_no_function_is_longer_than_a_screenful():
    offences = [line for f in python_files() for line in long_functions(f)]
    assert not offences, f"split into named helpers (max {MAX_FUNCTION_LINES} lines):\n" + "\n".join(offences)


def test_project_imports_sit_at_module_level_unless_listed():
    offences = []
    for f in python_files():
        for rel, line, module in project_imports_in_functions(f):
            if rel.startswith("multisk/commands/"):
                continue
            if (rel, module) not in DEFERRED_IMPORTS | NOT_YET_MOVED:
                offences.append(f"{rel}:{line} imports {module} inside a function")
    assert not offences, "move to the top of the module (or list it with its reason):\n" + "\n".join(offences)


def test_the_lists_hold_only_what_is_still_there():
    # an entry whose import has moved must leave the list, so the list cannot grow stale
    present = {(rel, module) for f in python_files() for rel, _, module in project_imports_in_functions(f)}
    stale = sorted((DEFERRED_IMPORTS | NOT_YET_MOVED) - present)
    assert not stale, stale


def test_the_checkers_see_what_they_look_for():
    source = ("def short():\n    return 1\n\n"
              "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "    return x\n\n"
              "class C:\n    def method(self):\n        from multisk.data import text\n        from . import dataset\n"
              "        import multisk.config\n        import numpy\n        return text\n")
    probe = SRC / "data" / "probe.py"
    assert long_functions(probe, source) == [f"multisk/data/probe.py:4 long has {MAX_FUNCTION_LINES + 2} lines"]
    assert [(line, m) for _, line, m in project_imports_in_functions(probe, source)] == [
        (109, "multisk.data"), (110, "multisk.data"), (111, "multisk.config")]
