"""The served dailies page in a real headless Chromium: it renders, its keys move the selection, and `A` and
`N` change the shot's review state in Redis (approve releasing the shot's held video).

Chromium and its driver come from the system (Debian: `chromium`, `chromium-driver`); Selenium is pointed at
both, so it never looks for or downloads a browser. Without them the test is skipped, except in CI, where
their absence is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.wait import WebDriverWait

from farm.dailies.assets import STYLE
from farm.dailies.page import write_page
from farm.dailies.server import DailiesServer
from farm.dailies.sheet import gather
from farm.planning.plan import StepKind
from farm.runs import review
from farm.runs.state import RunStore
from tests.integration.dailies_support import (
    RecordingSender,
    finish,
    serving,
    submit_for_review,
)

WINDOW = (1400, 1000)
DEADLINE_S = 10.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
    "--force-device-scale-factor=1",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
)
"""Headless and quiet: nothing but the loopback page is ever fetched."""


def system_browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = "needs Chromium and chromedriver (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must install them: {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = system_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        yield chrome
    finally:
        chrome.quit()


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {DEADLINE_S:g} s"
        time.sleep(0.05)


def accent() -> tuple[int, int, int]:
    """The page's highlight colour, as its stylesheet declares it."""
    found = re.search(r"--accent: #([0-9a-f]{6})", STYLE)
    assert found is not None
    rgb = bytes.fromhex(found.group(1))
    return rgb[0], rgb[1], rgb[2]


def test_arrows_select_shots_and_a_and_n_review_them_in_a_real_browser(
    browser: webdriver.Chrome, client: redis.Redis, sample_path: Path, tmp_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    run_id = submit_for_review(runs, sender, sample_path, tmp_path / "out")

    with serving(DailiesServer(runs, sender, run_id, "127.0.0.1", 0)) as server:
        browser.get(server.login_url)
        assert browser.current_url == server.url, "the key is traded for a cookie and leaves the address bar"
        WebDriverWait(browser, DEADLINE_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".card.selected"))
        shown = sum(len(c.frames) + (c.clip is not None) for c in gather(runs, run_id).cards)
        loaded = "return [...document.images].filter(i => i.complete && i.naturalWidth > 0).length"
        eventually(lambda: browser.execute_script(loaded) == shown, "every thumbnail loaded")
        screenshot = tmp_path / "dailies.png"
        assert browser.save_screenshot(str(screenshot))
        viewport = browser.execute_script("return [window.innerWidth, window.innerHeight]")
        with Image.open(screenshot) as picture:
            assert picture.format == "PNG" and list(picture.size) == viewport
            colours = picture.convert("RGB").getcolors(picture.width * picture.height) or []
        assert accent() in {rgb for _, rgb in colours}, "the selected card is highlighted"

        cards = browser.find_elements(By.CSS_SELECTOR, ".card")
        shots = [int(c.get_attribute("data-shot") or 0) for c in cards]
        keys = ActionChains(browser)

        def selected() -> int:
            card = browser.find_element(By.CSS_SELECTOR, ".card.selected")
            return int(card.get_attribute("data-shot") or 0)

        assert selected() == shots[0]
        keys.send_keys(Keys.ARROW_RIGHT).perform()
        assert selected() == shots[1]
        keys.send_keys("a").perform()
        eventually(lambda: runs.reviews(run_id).get(shots[1]) == "approved", "approved in Redis")

        def queued_video() -> set[str]:
            states = runs.states(run_id)
            return {i for i, s in runs.steps(run_id).items() if s.shot == shots[1] and states[i] == "queued"}

        # The decision is stored before the release that follows it on the server's thread: wait for both.
        eventually(lambda: bool(queued_video()) and queued_video() <= set(sender.sent), "video released")
        video = queued_video()
        assert video and video <= set(sender.sent), "its held video was released to the queue"
        assert not video & runs.gated(run_id)
        badge = f'.card[data-shot="{shots[1]}"] [data-field="review"]'
        eventually(lambda: browser.find_element(By.CSS_SELECTOR, badge).text == "approved", "shown")

        keys.send_keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_UP, Keys.ARROW_RIGHT).perform()
        assert selected() == shots[3]
        keys.send_keys("n").perform()
        eventually(lambda: runs.reviews(run_id).get(shots[3]) == "needs_review", "flagged in Redis")
        keys.send_keys(Keys.ARROW_LEFT).perform()
        assert selected() == shots[2]
    assert runs.reviews(run_id) == {shots[1]: "approved", shots[3]: "needs_review"}


def test_the_page_on_disk_moves_the_selection_and_acts_on_nothing(
    browser: webdriver.Chrome, client: redis.Redis, sample_path: Path, tmp_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    run_id = submit_for_review(runs, sender, sample_path, tmp_path / "out")
    held_shot = next(s.shot for s in runs.steps(run_id).values() if s.kind is StepKind.KEN_BURNS)
    assert held_shot is not None
    released = review.approve(runs, sender, run_id, [held_shot]).steps
    finish(runs, run_id, [runs.step(run_id, i) for i in released])
    index = write_page(gather(runs, run_id))
    before, sent = (runs.reviews(run_id), runs.states(run_id)), list(sender.sent)

    browser.get(index.as_uri())
    poster = browser.find_element(By.CSS_SELECTOR, f'.card[data-shot="{held_shot}"] .clip img')
    eventually(lambda: poster.get_property("naturalWidth") != 0, "the clip's poster shown")
    assert browser.save_screenshot(str(tmp_path / "dailies-on-disk.png"))
    buttons = browser.find_elements(By.CSS_SELECTOR, "button[data-action]")
    assert buttons and not any(b.is_enabled() for b in buttons)
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, "a").perform()
    selected = browser.find_element(By.CSS_SELECTOR, ".card.selected")
    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    assert selected.get_attribute("data-shot") == cards[1].get_attribute("data-shot")
    message = selected.find_element(By.CSS_SELECTOR, ".message").text
    assert f"farm dailies {run_id} --serve" in message
    assert (runs.reviews(run_id), runs.states(run_id)) == before and sender.sent == sent
