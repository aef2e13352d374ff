"""Suite-wide hooks and shared fixtures.

Shared fixtures: ``store`` (the synthetic store of a test module, sizes from its ``STORE_SIZES``),
``synthetic_stores`` (the same, any sizes, one store per session and sizes), ``isolated_word_vector_cache``
(converted word vectors go to a per-test cache directory), ``free_port`` (a free TCP port for a
process group) and ``logged_losses`` (the step → loss records of a run's metrics.jsonl).

Media tests: a test marked ``@pytest.mark.media`` reads the clipart benchmark's Debian packages
(OpenClipArt, Tux Paint, Asterisk). Without them it is skipped, because a developer machine may lack
them. CI installs them on a best-effort basis and, when the install succeeded, sets
``MULTISK_REQUIRE_MEDIA=1`` (see .ci/run): from then on a media test that does not run is a failure,
whatever made it skip, so a broken install or a wrong path can no longer pass as green.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable, Dict

import pytest

from synthetic_store import write_synthetic_store

pytest_plugins = ["pytester"]  # test_clipart runs this file's hooks on an inline session

REQUIRE_MEDIA_ENV = "MULTISK_REQUIRE_MEDIA"
# Browser tests (``@pytest.mark.browser``) drive the Debian ``chromium`` through its ``chromedriver``
# (package ``chromium-driver``) with selenium; skipped without them, failed instead when
# MULTISK_REQUIRE_BROWSER=1 (.ci/run sets it once the packages are installed).
REQUIRE_BROWSER_ENV = "MULTISK_REQUIRE_BROWSER"


def media_required() -> bool:
    return os.environ.get(REQUIRE_MEDIA_ENV, "") not in ("", "0")


def browser_required() -> bool:
    return os.environ.get(REQUIRE_BROWSER_ENV, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"media: needs the clipart Debian media packages; skipped without them, failed instead when "
        f"{REQUIRE_MEDIA_ENV}=1",
    )
    config.addinivalue_line(
        "markers",
        f"browser: drives headless chromium (Debian chromium + chromium-driver, selenium); skipped without "
        f"them, failed instead when {REQUIRE_BROWSER_ENV}=1",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("media") is None:
        return
    from multisk.data.formats.clipart import ClipartSources, apt_install_line

    missing = ClipartSources().missing_packages()
    if missing:
        pytest.skip(f"clipart Debian packages not installed ({apt_install_line(missing)})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if item.get_closest_marker("media") and media_required():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: media test skipped ({reason}) although {REQUIRE_MEDIA_ENV}=1 says the clipart media "
            f"packages were installed; it must run"
        )
    elif item.get_closest_marker("browser") and browser_required():
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid}: browser test skipped ({reason}) although {REQUIRE_BROWSER_ENV}=1 says chromium and "
            f"chromium-driver were installed; it must run"
        )


# ---------------------------------------------------------------------------------------- shared fixtures
@pytest.fixture(scope="session")
def synthetic_stores(tmp_path_factory) -> Callable[..., Path]:
    """``synthetic_stores(**sizes)`` → the root of a store written by
    :func:`synthetic_store.write_synthetic_store` with those arguments, once per session and arguments
    (tests read it; none may modify it)."""
    made: Dict[tuple, Path] = {}

    def make(**sizes) -> Path:
        key = tuple(sorted(sizes.items()))
        if key not in made:
            made[key] = write_synthetic_store(tmp_path_factory.mktemp("synthetic") / "store", **sizes)
        return made[key]

    return make


@pytest.fixture(scope="module")
def store(request, synthetic_stores) -> Path:
    """The synthetic store of a test module: the sizes of its ``STORE_SIZES`` dict, else the defaults."""
    return synthetic_stores(**getattr(request.module, "STORE_SIZES", {}))


@pytest.fixture
def isolated_word_vector_cache(tmp_path, monkeypatch) -> Path:
    """Keep converted word vectors out of the user's ~/.cache: ``MULTISK_CACHE_DIR`` is a per-test folder."""
    cache = tmp_path / "multisk-cache"
    monkeypatch.setenv("MULTISK_CACHE_DIR", str(cache))
    return cache


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()`` → a TCP port on 127.0.0.1 that was free a moment ago (a process group's MASTER_PORT)."""
    return _free_port


def _logged_losses(run_dir: Path) -> Dict[int, float]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.fixture(scope="session")
def logged_losses() -> Callable[[Path], Dict[int, float]]:
    """``logged_losses(run_dir)`` → ``{step: loss}`` of the run's metrics.jsonl (steps that logged a loss)."""
    return _logged_losses
