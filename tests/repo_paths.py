"""The repository's folders, for test modules at any depth under tests/ (importable as ``repo_paths``:
pyproject.toml puts tests/ on ``sys.path``)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
