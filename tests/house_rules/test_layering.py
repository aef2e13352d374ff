"""The one-way import graph: ``multisk.errors`` is a leaf, and the library never imports the
applications (train, evaluate, commands, cli) — not at module level and not inside functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from repo_paths import REPO

SRC = REPO / "src" / "multisk"
LIBRARY_PACKAGES = ("sinkhorn", "models", "losses", "data", "metrics", "prior")
LIBRARY_MODULES = ("config.py", "errors.py", "modalities.py", "checkpoint.py", "device.py", "precision.py")
APPLICATIONS = ("multisk.train", "multisk.evaluate", "multisk.commands", "multisk.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """Every module an ``import`` / ``from ... import`` anywhere in the file names (relative imports
    resolved against the file's package), with its line number; ``from P import x`` also yields ``P.x``
    since x may be a submodule."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def library_files() -> list[Path]:
    files = [SRC / name for name in LIBRARY_MODULES]
    for package in LIBRARY_PACKAGES:
        files += sorted((SRC / package).rglob("*.py"))
    return files


def is_application(module: str) -> bool:
    return any(module == app or module.startswith(app + ".") for app in APPLICATIONS)


def test_library_imports_no_application_module():
    files = library_files()
    assert len(files) > 20 and all(f.is_file() for f in files)
    offences = [f"{f.relative_to(SRC.parent)}:{line} imports {module}"
                for f in files for line, module in imported_modules(f) if is_application(module)]
    assert not offences, "\n".join(offences)


def test_the_paper_model_and_losses_know_nothing_of_the_prior():
    """The text-space prior (not in the paper) is a plug-in: multisk.prior wraps the model and hooks
    into the objective; no module of the paper's model or losses names it."""
    files = sorted((SRC / "models").rglob("*.py")) + sorted((SRC / "losses").rglob("*.py"))
    assert len(files) > 10
    offences = [f"{f.relative_to(SRC.parent)}:{n}" for f in files
                for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if "prior" in line.lower()]
    assert not offences, "\n".join(offences)


def test_errors_module_is_a_leaf():
    imports = [module for _, module in imported_modules(SRC / "errors.py")]
    assert not [m for m in imports if m == "multisk" or m.startswith("multisk.")], imports
    # at run time too: importing it loads no other multisk module (and no third-party package)
    code = ("import sys, multisk.errors as e; "
            "print(sorted(m for m in sys.modules if m.startswith('multisk'))); "
            "print(e.ConfigError.__module__, e.FeatureStoreError.__module__, e.DataFormatError.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["['multisk', 'multisk.errors']", "multisk.errors multisk.errors multisk.errors"]


def test_old_import_paths_re_export_the_same_error_types():
    from multisk import errors
    from multisk.config import ConfigError, load_config
    from multisk.data.store.feature_store import FeatureStore, FeatureStoreError

    assert ConfigError is errors.ConfigError and FeatureStoreError is errors.FeatureStoreError
    assert all(issubclass(cls, ValueError) for cls in (errors.ConfigError, errors.FeatureStoreError,
                                                        errors.DataFormatError))
    with pytest.raises(errors.ConfigError, match="model.modalities"):
        load_config(None, ["model.modalities=[smell]"])
    with pytest.raises(errors.FeatureStoreError, match="manifest not found"):
        FeatureStore(Path("/nonexistent-store"), "train")
    assert set(errors.UserFacingError) >= {errors.ConfigError, errors.FeatureStoreError, errors.DataFormatError}


def test_the_checker_sees_imports_inside_functions_and_relative_ones():
    # the forms a violation would take: in a function, relative, plain import of a submodule
    source = ("def f():\n    from multisk.train import trainer\n"
              "def g():\n    from ..evaluate import pipeline\n"
              "import multisk.commands.data\n"
              "from . import text\n")
    modules = [m for _, m in imported_modules(SRC / "data" / "probe.py", source)]
    assert {"multisk.train", "multisk.evaluate", "multisk.evaluate.pipeline", "multisk.commands.data",
            "multisk.data.text"} <= set(modules)
    assert {m for m in modules if is_application(m)} == {"multisk.train", "multisk.train.trainer", "multisk.evaluate",
                                                        "multisk.evaluate.pipeline", "multisk.commands.data"}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``module -> project modules it imports`` over every file of ``src`` (imports anywhere in the file,
    in-function ones included: an import deferred into a function hides a cycle, it does not remove it).
    Only names that are modules (a file or a package) count."""
    files = sorted(src.rglob("*.py"))
    names = {module_name_under(f, src): f for f in files}
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        targets = {module for _, module in imported_modules_under(path, src)}
        graph[name] = {t for t in targets if t in names and t != name}
    return graph


def module_name_under(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules_under(path: Path, src: Path) -> list[tuple[int, str]]:
    if src == SRC:
        return imported_modules(path)
    # another tree (the check that the test sees a cycle): resolve relative imports against it
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle ``[a, b, ..., a]`` of ``graph``, or [] (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_no_import_cycle_among_the_modules():
    graph = import_graph()
    assert len(graph) > 60 and "multisk.evaluate.pipeline" in graph
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    package = tmp_path / "multisk"
    (package / "evaluate").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "evaluate" / "__init__.py").write_text("")
    (package / "evaluate" / "pipeline.py").write_text(
        "def score():\n    from multisk.evaluate.baselines import structure_preservation\n")
    (package / "evaluate" / "baselines.py").write_text("from multisk.evaluate.pipeline import score\n")
    (package / "evaluate" / "report.py").write_text("import multisk.evaluate.pipeline\n")
    cycle = find_cycle(import_graph(package))
    assert cycle in (["multisk.evaluate.baselines", "multisk.evaluate.pipeline", "multisk.evaluate.baselines"],
                     ["multisk.evaluate.pipeline", "multisk.evaluate.baselines", "multisk.evaluate.pipeline"])
    (package / "evaluate" / "pipeline.py").write_text("def score():\n    return 1\n")
    assert find_cycle(import_graph(package)) == []
