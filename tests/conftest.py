"""Suite-wide hooks.

Media tests: a test marked ``@pytest.mark.media`` reads the clipart benchmark's Debian packages
(OpenClipArt, Tux Paint, Asterisk). Without them it is skipped, because a developer machine may lack
them. CI installs them on a best-effort basis and, when the install succeeded, sets
``MULTISK_REQUIRE_MEDIA=1`` (see .ci/run): from then on a media test that does not run is a failure,
whatever made it skip, so a broken install or a wrong path can no longer pass as green.
"""

from __future__ import annotations

import os

import pytest

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
    from multisk.data.clipart import ClipartSources, apt_install_line

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
