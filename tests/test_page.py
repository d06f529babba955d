"""The web page at GET /, end to end in real headless Chromium against the served shapes model
(auth on): key, prompt to picture with progress and previews, pixels equal to the API's, download,
cancel of a 4K job, the API's errors next to their fields, several jobs at once, a phone viewport.
429 and 503 come from a gateway in this process (fake stages, real HTTP on loopback) whose rate
limit and job store are small enough to reach them for real."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import threading

import httpx
import numpy as np
import pytest

from tests.browser import (
    blob_bytes,
    blocked_loads,
    chromium,
    open_page,
    png_pixels,
    rendered_pixels,
    wait_for,
)
from tests.serve_harness import decode_images, deployed, free_port, local_args

pytest.importorskip("selenium", reason="the page tests drive Chromium with Selenium (pip install -e '.[test]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

APP = "sana-page"
KEY = "sk-page-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "a blue star on a yellow background"

# Records, for the first card, each change the page makes (progress value, status words, previews
# shown, final images shown, state), so the test can tell what came before what.
TRACE = """
window.__trace = [];
const cards = document.getElementById("cards");
new MutationObserver(() => {
  const card = cards.querySelector(".card");
  if (!card) return;
  window.__trace.push({
    value: card.querySelector(".card-progress").value,
    status: card.querySelector(".card-status").textContent,
    previews: card.querySelectorAll(".card-previews img[src]").length,
    finals: card.querySelectorAll(".card-images img").length,
    state: card.dataset.state,
  });
}).observe(cards, {subtree: true, childList: true, attributes: true, characterData: true});
"""


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_url(ray_serve, tmp_path_factory):
    from models.materialize import materialize

    shapes = materialize("shapes", tmp_path_factory.mktemp("shapes"))
    shapes_4k = materialize("shapes-4k", tmp_path_factory.mktemp("shapes-4k"))
    args = local_args(str(shapes), str(shapes_4k))
    args["auth"] = {"enabled": True, "key_hashes": [hashlib.sha256(KEY.encode()).hexdigest()]}
    args["files"] = {"directory": str(tmp_path_factory.mktemp("files"))}
    # The image check's stand-in flags red pictures; flag only, so every picture stays as drawn.
    checker = materialize("tiny-image-checker", tmp_path_factory.mktemp("image-checker"))
    args["safety"]["image_checker"] = {"enabled": True, "checkpoint": str(checker), "action": "flag",
                                       "deployment": {"ray_actor_options": {"num_cpus": 0.05}}}
    with deployed(args, APP, "/page"):
        yield f"{ray_serve}/page"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    driver = chromium(downloads)
    driver.downloads = downloads
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, page_url):
    """The page, loaded fresh with the right key, ready (the models listed)."""
    browser.set_window_size(1280, 1000)
    open_page(browser, f"{page_url}/", KEY)
    wait_for(lambda: "Ready" in _text(browser, "server-status"), 30, what="the page to list the models")
    yield browser
    assert not blocked_loads(browser)


def _text(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def _fill(driver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def _card(driver, index: int = 0):
    return driver.find_elements(By.CSS_SELECTOR, "#cards > .card")[index]


def _state(card) -> str:
    return card.get_attribute("data-state")


# --- the key --------------------------------------------------------------------------------------


def test_with_auth_on_the_page_asks_for_a_key_and_shows_the_401_for_a_wrong_one(browser, page_url):
    open_page(browser, f"{page_url}/", None)
    wait_for(lambda: "needs an API key" in _text(browser, "server-status"), 30, what="the key prompt")
    assert browser.find_element(By.ID, "key-panel").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, "#model option") == []  # nothing without a key

    _fill(browser, "api-key", "sk-wrong")
    browser.find_element(By.ID, "use-key").click()
    error = wait_for(lambda: _text(browser, "api-key-error"), 30, what="the 401 text")
    assert "invalid API key" in error and "401" in error
    assert browser.find_element(By.ID, "api-key").get_attribute("aria-invalid") == "true"

    _fill(browser, "api-key", KEY)
    browser.find_element(By.ID, "api-key").send_keys(Keys.ENTER)  # the keyboard submits the key form
    wait_for(lambda: "Ready" in _text(browser, "server-status"), 30, what="the models with the right key")
    assert _text(browser, "api-key-error") == ""
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#model option")]
    assert options == ["sana-shapes", "sana-shapes-4k"]


# --- prompt to picture ----------------------------------------------------------------------------


def test_prompt_to_picture_with_progress_previews_true_size_pixels_and_download(page, page_url):
    _fill(page, "prompt", PROMPT)
    Select(page.find_element(By.ID, "size")).select_by_value("640x384")  # a non-square preset
    _fill(page, "steps", "10")
    page.find_element(By.ID, "random-seed").click()  # fixed seed
    _fill(page, "seed", "7")
    Select(page.find_element(By.ID, "previews")).select_by_value("2")
    page.execute_script(TRACE)
    page.find_element(By.ID, "generate").click()

    card = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#cards > .card"), 10, what="a card")[0]
    wait_for(lambda: _state(card) == "completed", 120, what="the job to complete")
    trace = page.execute_script("return window.__trace")

    # Progress: step k/N with elapsed time and an ETA while denoising, then 100%.
    statuses = [entry["status"] for entry in trace]
    assert any(re.search(r"Denoising · step [1-9]/10 · [\d.]+ s elapsed · ETA ~", s) for s in statuses), statuses
    values = [entry["value"] for entry in trace]
    assert values == sorted(values) and values[-1] == 100
    assert card.find_element(By.CSS_SELECTOR, ".card-progress").get_attribute("value") == "100"
    # A preview was on the card before the picture was.
    assert any(entry["previews"] > 0 and entry["finals"] == 0 and entry["value"] < 100 for entry in trace), trace

    # The picture at its true size, and its pixels are the API's for the same request.
    img = card.find_element(By.CSS_SELECTOR, ".card-images img")
    assert page.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [640, 384]
    assert not card.find_elements(By.CSS_SELECTOR, "figcaption.flagged")  # the image check passed it
    body = {"prompt": PROMPT, "model": "sana-shapes", "size": "640x384", "num_inference_steps": 10, "seed": 7,
            "output_format": "png"}
    answer = httpx.post(f"{page_url}/v1/images/generations", json=body, headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    expected = decode_images(answer.json())[0]
    shown = png_pixels(blob_bytes(page, img.get_attribute("src")))
    assert np.array_equal(shown, expected)
    assert np.array_equal(rendered_pixels(page, img), expected)  # as drawn, too

    # Seed, timings, and the download: the same file, saved by the browser.
    details = card.find_element(By.CSS_SELECTOR, ".card-details").text
    assert "Seed\n7" in details and "denoise" in details
    link = card.find_element(By.CSS_SELECTOR, "a.download")
    assert link.get_attribute("href") == img.get_attribute("src")
    name = link.get_attribute("download")
    assert name == "sana-7-1.png"
    link.click()
    saved = wait_for(lambda: (page.downloads / name).exists() and (page.downloads / name), 30, what="the download")
    wait_for(lambda: saved.stat().st_size > 0 and not list(page.downloads.glob("*.crdownload")), 30)
    assert np.array_equal(png_pixels(saved.read_bytes()), expected)

    # Click to enlarge: the same picture in a dialog, closed with Escape.
    card.find_element(By.CSS_SELECTOR, "button.enlarge").click()
    viewer = page.find_element(By.ID, "viewer")
    wait_for(lambda: viewer.get_attribute("open") is not None, 5, what="the viewer")
    assert page.find_element(By.ID, "viewer-image").get_attribute("src") == img.get_attribute("src")
    page.find_element(By.ID, "viewer-close").send_keys(Keys.ESCAPE)
    wait_for(lambda: viewer.get_attribute("open") is None, 5, what="the viewer to close")

    screenshot = os.environ.get("SANA_PAGE_SCREENSHOT")
    if screenshot:  # docs/page.png is made this way (see docs/development.md)
        page.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
        page.save_screenshot(screenshot)

    # "Use these settings again" puts the request, with its seed, back into the form.
    _fill(page, "prompt", "something else")
    card.find_element(By.CSS_SELECTOR, ".card-again").click()
    assert page.find_element(By.ID, "prompt").get_attribute("value") == PROMPT
    assert page.find_element(By.ID, "seed").get_attribute("value") == "7"
    assert not page.find_element(By.ID, "random-seed").is_selected()
    assert Select(page.find_element(By.ID, "size")).first_selected_option.get_attribute("value") == "640x384"


def test_cancel_stops_a_4k_job_and_its_card_says_so(page, page_url):
    Select(page.find_element(By.ID, "model")).select_by_value("sana-shapes-4k")
    Select(page.find_element(By.ID, "size")).select_by_value("4096x4096")
    _fill(page, "prompt", "a red heart")
    _fill(page, "steps", "20")
    page.find_element(By.ID, "generate").click()
    card = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#cards > .card"), 10, what="a card")[0]
    wait_for(lambda: re.search(r"step [1-9]\d*/20", card.find_element(By.CSS_SELECTOR, ".card-status").text),
             180, what="the 4K job's first step")
    card.find_element(By.CSS_SELECTOR, ".card-cancel").click()
    wait_for(lambda: _state(card) == "cancelled", 60, what="the card to say cancelled")
    status = card.find_element(By.CSS_SELECTOR, ".card-status").text
    step = int(re.search(r"Cancelled at step (\d+)/20", status)[1])
    assert step < 20
    job_id = card.get_attribute("data-job-id")
    record = httpx.get(f"{page_url}/v1/images/jobs/{job_id}", headers=AUTH, timeout=30).json()
    assert record["status"] == "cancelled" and record["progress"]["step"] < 20
    assert not card.find_element(By.CSS_SELECTOR, ".card-cancel").is_displayed()


def test_the_apis_size_errors_show_next_to_the_size_field(page, page_url):
    _fill(page, "prompt", "a red heart")
    Select(page.find_element(By.ID, "size")).select_by_value("custom")
    for width, height in (("5000", "5000"), ("4096", "4096")):  # over every limit; over this route's
        _fill(page, "width", width)
        _fill(page, "height", height)
        page.find_element(By.ID, "generate").click()
        shown = wait_for(lambda: _text(page, "size-error"), 30, what="the size error")
        answer = httpx.post(f"{page_url}/v1/images/jobs", headers=AUTH, timeout=30,
                            json={"prompt": "a red heart", "model": "sana-shapes", "size": f"{width}x{height}"})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "size"
        assert shown.startswith(answer.json()["error"]["message"])
        assert page.find_element(By.ID, "width").get_attribute("aria-invalid") == "true"
        assert page.find_elements(By.CSS_SELECTOR, "#cards > .card") == []  # no job was made
        page.find_element(By.ID, "prompt").click()
    assert page.switch_to.active_element.get_attribute("id") in ("width", "prompt")


def test_a_picture_the_safety_check_flags_says_so_on_its_card(page):
    _fill(page, "prompt", "a red heart")
    Select(page.find_element(By.ID, "size")).select_by_value("512x512")
    page.find_element(By.ID, "random-seed").click()  # fixed seed
    _fill(page, "seed", "4")
    page.find_element(By.ID, "generate").click()
    card = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#cards > .card"), 10, what="a card")[0]
    wait_for(lambda: _state(card) == "completed", 120, what="the job to complete")
    figure = card.find_element(By.CSS_SELECTOR, ".card-images figure")
    assert figure.get_attribute("data-flagged") == "true"
    assert figure.find_element(By.CSS_SELECTOR, "figcaption.flagged").text == (
        "Image 1 was flagged by the server's safety check.")


def test_several_jobs_run_at_once_each_in_its_own_card_with_hearts_for_unsafe_words(page):
    prompts = ["a green square", "一颗红心 🙂 a red heart, gore"]  # any script, emoji; "gore" is blocklisted
    for count, prompt in enumerate(prompts, start=1):
        _fill(page, "prompt", prompt)
        page.find_element(By.ID, "generate").click()
        # Generate is disabled while its submit is in flight (no double submits): wait for the card.
        wait_for(lambda: len(page.find_elements(By.CSS_SELECTOR, "#cards > .card")) == count, 30,
                 what=f"card {count}")
    cards = page.find_elements(By.CSS_SELECTOR, "#cards > .card")
    wait_for(lambda: all(_state(card) == "completed" for card in cards), 180, what="both jobs")
    titles = [card.find_element(By.CSS_SELECTOR, ".card-title").text for card in cards]
    assert titles == prompts[::-1]  # newest first
    revised = cards[0].find_element(By.CSS_SELECTOR, ".card-revised")
    assert revised.is_displayed() and "❤️" in revised.find_element(By.TAG_NAME, "mark").text
    assert "gore" not in revised.text and "一颗红心 🙂" in revised.text
    assert not cards[1].find_element(By.CSS_SELECTOR, ".card-revised").is_displayed()


def test_a_phone_sized_viewport_labels_and_the_keyboard_alone_make_a_picture(page):
    page.set_window_size(390, 844)
    page.refresh()
    wait_for(lambda: "Ready" in _text(page, "server-status"), 30)
    assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    unlabelled = page.execute_script("""
        return [...document.querySelectorAll("input, select, textarea, button, progress")]
          .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label")
                          && !el.getAttribute("aria-labelledby") && !(el.textContent || "").trim())
          .map((el) => el.id || el.outerHTML.slice(0, 80));""")
    assert unlabelled == []
    prompt = page.find_element(By.ID, "prompt")
    prompt.click()
    prompt.send_keys("a yellow star")
    prompt.send_keys(Keys.CONTROL, Keys.ENTER)  # Ctrl+Enter generates
    card = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#cards > .card"), 10, what="a card")[0]
    wait_for(lambda: _state(card) == "completed", 120, what="the job")
    img = card.find_element(By.CSS_SELECTOR, ".card-images img")
    assert img.size["width"] <= 390 and page.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")
    assert card.find_element(By.CSS_SELECTOR, ".card-progress").get_attribute("aria-label")


# --- 429 and 503, for real, from a small gateway in this process ------------------------------------


@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory):
    """The gateway's app on fake stages behind uvicorn on loopback: auth with a burst of 4 requests
    a key (no refill to speak of), a job store for 1 job, and no job runner (jobs stay queued)."""
    import uvicorn

    from serve.api.app import build_api
    from serve.api.deps import build_deps
    from serve.jobs.book import JobBook
    from tests.unit.fakes import LocalHandle, RecordingMetrics, app_config, fake_stages

    config = app_config(files={"directory": str(tmp_path_factory.mktemp("files"))},
                        auth={"enabled": True, "key_hashes": [hashlib.sha256(KEY.encode()).hexdigest()],
                              "requests_per_minute": 0.1, "burst": 4},
                        jobs={"max_jobs": 1})
    deps = build_deps(config, fake_stages(config.routes).handles(), RecordingMetrics(),
                      LocalHandle(JobBook(config.jobs)))
    app = build_api(dataclasses.replace(deps, job_runner=None))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, what="uvicorn")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_503_and_429_show_the_servers_message_and_retry_after(browser, small_gateway):
    browser.set_window_size(1280, 1000)
    open_page(browser, f"{small_gateway}/", KEY)  # the page itself needs no key
    wait_for(lambda: "Ready" in _text(browser, "server-status"), 30)  # request 1 of the burst
    _fill(browser, "prompt", "a red heart")
    browser.find_element(By.ID, "generate").click()  # 2: the job (queued: no runner); 3: its events
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#cards > .card"), 10, what="a card")
    wait_for(lambda: "Queued" in _card(browser).find_element(By.CSS_SELECTOR, ".card-status").text, 10)

    browser.find_element(By.ID, "generate").click()  # 4: the store holds one job → 503
    busy = wait_for(lambda: _text(browser, "form-error"), 10, what="the 503 text")
    assert "busy" in busy and "job store is full" in busy and re.search(r"Retry after \d+ s", busy)

    browser.find_element(By.ID, "generate").click()  # 5: over the key's burst → 429
    wait_for(lambda: "Too many" in _text(browser, "form-error"), 10, what="the 429 text")
    limited = _text(browser, "form-error")
    assert "rate limit exceeded" in limited and re.search(r"Retry after \d+ s", limited)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#cards > .card")) == 1


def test_the_page_and_its_assets_are_same_origin_only(page_url):
    page = httpx.get(f"{page_url}/", timeout=30)  # no key: the shell is public, its data is not
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<base href="/page/">' in page.text
    for name in ("page.js", "page.css"):
        asset = httpx.get(f"{page_url}/ui/{name}", timeout=30)
        assert asset.status_code == 200
        assert not re.search(r"https?://", asset.text)  # no address elsewhere to fetch from
    assert httpx.get(f"{page_url}/ui/nope.js", timeout=30).status_code == 404
    assert httpx.get(f"{page_url}/v1/models", timeout=30).status_code == 401
