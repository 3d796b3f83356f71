"""The studio in a real headless Chromium (Debian's chromium + chromium-driver via selenium).

One end-to-end story through the page, against the real `talkie serve`:
upload the demo narration and templates through the page's file inputs, start the batch,
watch the progress reach 100 % with every item a success, play a result, switch the page to
Chinese and back, then restart the server under the page: it shows "reconnecting", comes
back live by itself and still shows the same finished batch. Screenshots go to
$TALKIE_SCREENSHOTS (default /tmp/talkie-screenshots); their paths are printed.

Run:  .venv/bin/python -m pytest -s tests/studio/test_browser.py
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from studio_support import StudioServer, chromium_paths, http_json, make_demo_media, screenshot_dir, talkie_binary

RENDER_TIMEOUT = 120  # seconds for the whole demo batch (2 items of 4 s) on 2 busy cores


@pytest.fixture(scope="session")
def chromium():
    """(browser, driver) paths, or a skip when Debian's chromium / chromium-driver are missing."""
    browser, driver = chromium_paths()
    if browser is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are needed (apt-get install chromium chromium-driver)")
    return browser, driver


@pytest.fixture(scope="session")
def talkie_path() -> Path:
    """The talkie binary ($TALKIE_BINARY or .build/debug/talkie), or a skip saying how to build it."""
    binary = talkie_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.skip(f"the talkie binary is missing at {binary}: build it (swift build) or set TALKIE_BINARY")
    return binary


@pytest.fixture(scope="session")
def demo_media(tmp_path_factory) -> dict:
    return make_demo_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def studio(talkie_path, tmp_path):
    """A running `talkie serve` on a fresh workspace; stopped (SIGTERM, wait) at the end."""
    server = StudioServer(talkie_path, tmp_path / "ws", tmp_path / "talkie-serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def open_browser(chromium, tmp_path: Path, language: str = "en-US"):
    browser, driver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1000", "--autoplay-policy=no-user-gesture-required", "--mute-audio",
                     f"--lang={language}", f"--user-data-dir={tmp_path / ('chromium-' + language)}",
                     "--no-first-run", "--no-default-browser-check"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"intl.accept_languages": language})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver's path is given: selenium never runs selenium-manager (nothing is downloaded).
    return webdriver.Chrome(service=Service(driver), options=options)


class Page:
    """Small helpers over the page's data-testid hooks."""

    def __init__(self, driver, shots: Path):
        self.driver = driver
        self.shots = shots
        self.saved: list[Path] = []

    def q(self, testid: str, within=None):
        return (within or self.driver).find_element(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def all(self, testid: str, within=None):
        return (within or self.driver).find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def wait(self, predicate, timeout: float, message: str):
        def check(_):
            try:
                return predicate()
            except (StaleElementReferenceException, IndexError):
                return False
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(check)
        except Exception as error:  # add what the page shows to the failure
            raise AssertionError(f"{message} (waited {timeout:.0f} s)\n{self.describe()}") from error

    def click(self, element):
        # The top bar is sticky: centre the element first so nothing covers it.
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()

    def describe(self) -> str:
        try:
            return self.driver.execute_script("""
                const rows = [...document.querySelectorAll('[data-testid="item-row"]')].map(r =>
                  r.querySelector('.item-name').textContent + ': ' + r.dataset.status + ' ' + r.querySelector('[data-col="error"]').textContent);
                const log = [...document.querySelectorAll('[data-testid="log-line"]')].slice(-8).map(l => l.textContent);
                return 'connection: ' + document.querySelector('[data-testid="connection-state"]').dataset.state
                  + '\\noverall: ' + document.querySelector('[data-testid="overall-progress"]').getAttribute('aria-valuenow') + ' %'
                  + '\\nitems:\\n  ' + rows.join('\\n  ') + '\\nlog:\\n  ' + log.join('\\n  ')
                  + '\\ntoasts: ' + document.getElementById('toasts').textContent;""")
        except WebDriverException as error:
            return f"(page not readable: {error})"

    def connection(self) -> str:
        return self.q("connection-state").get_attribute("data-state")

    def rows(self):
        return self.all("item-row")

    def statuses(self) -> list[str]:
        return [row.get_attribute("data-status") for row in self.rows()]

    def overall(self) -> int:
        return int(self.q("overall-progress").get_attribute("aria-valuenow"))

    def screenshot(self, name: str, full_page: bool = False) -> Path:
        path = self.shots / name
        if full_page:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(1400, min(max(1000, height + 140), 6000))
            time.sleep(0.3)
            self.driver.save_screenshot(str(path))
            self.driver.set_window_size(1400, 1000)
        else:
            self.driver.save_screenshot(str(path))
        self.saved.append(path)
        print(f"screenshot: {path}")
        return path

    def severe_console_errors(self) -> list[str]:
        entries = self.driver.get_log("browser")
        return [entry["message"] for entry in entries if entry.get("level") == "SEVERE"
                # A refused connection while the test restarts the server is expected.
                and "ERR_CONNECTION_REFUSED" not in entry["message"] and "/ws" not in entry["message"]]


def test_batch_through_the_page(chromium, studio, demo_media, tmp_path):
    shots = screenshot_dir()
    driver = open_browser(chromium, tmp_path)
    page = Page(driver, shots)
    try:
        # 1. The page loads, in English (the browser's language), and goes live.
        driver.get(studio.url + "/")
        page.wait(lambda: page.connection() == "live", 30, "the page never connected its WebSocket")
        assert driver.execute_script("return document.documentElement.lang") == "en"
        assert page.q("start").is_enabled() is False, "start must wait for a narration and templates"

        # 2. Upload through the file inputs: one narration, two templates (several files at once).
        page.q("audio-input").send_keys(str(demo_media["narration"]))
        page.q("video-input").send_keys("\n".join(str(path) for path in demo_media["templates"]))
        page.wait(lambda: page.q("audio-name").text == "narration-en.wav", 60, "the narration never appeared")
        page.wait(lambda: len(page.all("template-card")) == 2, 60, "the two templates never appeared")
        page.wait(lambda: len(page.rows()) == 2, 30, "the batch table never showed two items")
        assert page.statuses() == ["pending", "pending"]
        assert page.q("audio-player").get_attribute("src").endswith("/api/inputs/audio/" + studio_state(studio)["audio"]["key"])
        names = sorted(card.find_element(By.CSS_SELECTOR, ".template-name").text for card in page.all("template-card"))
        assert names == ["closeup-512.mp4", "wide-512.mp4"]

        # The same content again under the same name: the server says duplicate, the page shows it.
        page.q("video-input").send_keys(str(demo_media["templates"][0]))
        page.wait(lambda: any(u.get_attribute("data-state") == "duplicate" for u in page.all("upload")), 60,
                  "a re-uploaded template was not shown as a duplicate")
        assert len(page.all("template-card")) == 2 and len(page.rows()) == 2

        # 3. Engine "classic" (the built-in CPU engine).
        engine = Select(page.q("engine-select"))
        if engine.first_selected_option.get_attribute("value") != "classic":
            engine.select_by_value("classic")
            page.wait(lambda: studio_state(studio)["settings"]["engine"] == "classic", 15, "the engine setting was not saved")
        assert page.q("fingerprint").text == studio_state(studio)["fingerprint"]
        page.screenshot("studio-1-uploaded.png")

        # 4. Start, and watch it render: frame progress, then 100 % with every item a success.
        page.wait(lambda: page.q("start").is_enabled(), 10, "start never became enabled")
        page.click(page.q("start"))
        running_shot = False
        deadline = time.monotonic() + RENDER_TIMEOUT
        while time.monotonic() < deadline:
            try:
                statuses = page.statuses()
                if not running_shot and "running" in statuses and 0 < page.overall() < 100:
                    page.screenshot("studio-2-rendering.png")
                    running_shot = True
                if page.overall() == 100 and statuses and all(s == "success" for s in statuses):
                    break
            except StaleElementReferenceException:
                pass
            time.sleep(0.2)
        else:
            raise AssertionError(f"the batch did not finish within {RENDER_TIMEOUT} s\n{page.describe()}\n"
                                 f"server log:\n{studio.log_tail()}")
        assert page.q("overall-percent").text.replace("\u00a0", " ") == "100 %"
        for row in page.rows():
            assert row.find_element(By.CSS_SELECTOR, '[data-col="attempts"]').text == "1"
            assert row.find_element(By.CSS_SELECTOR, '[data-col="duration"]').text.endswith("s")
            assert row.find_element(By.CSS_SELECTOR, '[data-col="score"]').text != "—"
            # where it ran: the classic engine reports the CPU (with --gpus: "on gpu 1")
            assert row.find_element(By.CSS_SELECTOR, '[data-testid="item-device"]').text == "on cpu"
        assert all(item["device"] == "cpu" for item in studio_state(studio)["items"])

        # The run log tells the story, and the page reminds to keep a backup.
        page.wait(lambda: not page.q("backup-reminder").get_attribute("hidden"), 10,
                  "no backup reminder after the batch finished")
        log_text = page.q("log").text
        assert "batch_started" in log_text and "item_succeeded" in log_text and "batch_finished" in log_text

        # 5. The results gallery: one player per output; play one.
        page.wait(lambda: len(page.all("result-video")) == 2, 15, "the results gallery did not show two videos")
        outputs = {item["outputUrl"] for item in studio_state(studio)["items"]}
        assert {video.get_attribute("src").replace(studio.url, "") for video in page.all("result-video")} == outputs
        video = page.all("result-video")[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", video)
        played = driver.execute_async_script("""
            const [video, done] = arguments;
            video.muted = true;
            video.play().then(() => done('playing'), (error) => done('play() failed: ' + error));""", video)
        assert played == "playing", played
        time.sleep(1.5)
        current = driver.execute_script("return arguments[0].currentTime", video)
        assert current > 0, f"the result video did not advance (currentTime {current})"
        assert page.q("download-all").get_attribute("href").endswith("/api/outputs.zip")
        page.screenshot("studio-3-finished.png")
        page.screenshot("studio-3-finished-full.png", full_page=True)

        # 6. Chinese and back; the choice is remembered.
        page.click(page.q("lang-toggle"))
        page.wait(lambda: driver.execute_script("return document.documentElement.lang") == "zh-CN", 5, "no switch to Chinese")
        assert driver.find_element(By.ID, "batch-title").text == "批量任务"
        assert page.rows()[0].find_element(By.CSS_SELECTOR, '[data-testid="item-status"]').text == "已完成"
        assert driver.execute_script("return localStorage.getItem('talkie.lang')") == "zh"
        page.screenshot("studio-4-chinese.png")
        page.click(page.q("lang-toggle"))
        page.wait(lambda: driver.execute_script("return document.documentElement.lang") == "en", 5, "no switch back to English")
        assert driver.find_element(By.ID, "batch-title").text == "Batch"
        assert driver.execute_script("return localStorage.getItem('talkie.lang')") == "en"

        # 7. The server goes away under the page: "reconnecting"; it returns: live again, same batch.
        assert studio.stop() == 0, f"talkie serve did not exit cleanly on SIGTERM:\n{studio.log_tail()}"
        page.wait(lambda: page.connection() == "reconnecting", 15, "the page did not notice the lost connection")
        assert not page.q("reconnect-banner").get_attribute("hidden")
        page.screenshot("studio-5-reconnecting.png")
        studio.start()
        page.wait(lambda: page.connection() == "live", 45, "the page did not reconnect after the server restarted")
        page.wait(lambda: page.q("reconnect-banner").get_attribute("hidden") is not None, 5, "the reconnect banner stayed")
        assert page.statuses() == ["success", "success"] and page.overall() == 100
        driver.refresh()
        page.wait(lambda: page.connection() == "live" and page.statuses() == ["success", "success"], 30,
                  "after a server restart, a reloaded page does not show the same finished batch")
        assert len(page.all("result-video")) == 2
        page.wait(lambda: all(driver.execute_script("return arguments[0].readyState", v) >= 2 for v in page.all("result-video")),
                  20, "the result videos did not load after the reload")
        page.screenshot("studio-6-after-restart.png")

        errors = page.severe_console_errors()
        assert not errors, "the page logged errors:\n" + "\n".join(errors)
    finally:
        driver.quit()
    print("screenshots:\n  " + "\n  ".join(str(path) for path in page.saved))


def test_page_defaults_to_chinese_for_a_chinese_browser(chromium, studio, tmp_path):
    driver = open_browser(chromium, tmp_path, language="zh-CN")
    page = Page(driver, screenshot_dir())
    try:
        driver.get(studio.url + "/")
        page.wait(lambda: page.connection() == "live", 30, "the page never connected its WebSocket")
        assert driver.execute_script("return document.documentElement.lang") == "zh-CN"
        assert driver.find_element(By.ID, "batch-title").text == "批量任务"
        assert page.q("lang-toggle").text == "English"
        assert driver.title == "Talkie 工作台"
    finally:
        driver.quit()


def studio_state(studio) -> dict:
    status, state = http_json("GET", studio.url + "/api/state")
    assert status == 200, f"GET /api/state answered {status}"
    return state
