"""Real headless Chromium for the page's tests: Debian's `chromium` driven by Selenium through
Debian's `chromium-driver` (both installed by .ci/run), nothing downloaded at test time."""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")

KEY_STORAGE = "sana-serve.api-key"  # what page.js keeps the key under
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver", "chromium-driver")


def _which(names: tuple[str, ...], env: str) -> str:
    found = os.environ.get(env) or next((shutil.which(name) for name in names if shutil.which(name)), None)
    if found is None:
        raise RuntimeError(f"no {names[0]} found: install Debian's chromium and chromium-driver (see .ci/run) "
                           f"or set ${env}")
    return found


def chromium(downloads: Path, width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium session that saves downloads into `downloads` without asking."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSERS, "SANA_TEST_CHROMIUM")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-first-run", "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_which(DRIVERS, "SANA_TEST_CHROMEDRIVER")), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    return driver


def wait_for(read: Callable[[], T], timeout_s: float = 60, every_s: float = 0.05, what: str = "") -> T:
    """`read()` once it is truthy; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or read}")
        time.sleep(every_s)


def open_page(driver: Any, url: str, key: str | None) -> None:
    """The page at `url`, with a fresh tab session (no key, no jobs) holding `key` if given."""
    driver.get(url)
    driver.execute_script("sessionStorage.clear(); if (arguments[1]) sessionStorage.setItem(arguments[0], arguments[1]);",
                          KEY_STORAGE, key)
    driver.refresh()


def blob_bytes(driver: Any, url: str) -> bytes:
    """The bytes behind a URL the page holds (a blob: URL of a fetched file), read in the page."""
    encoded = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
          const bytes = new Uint8Array(buffer);
          let text = "";
          for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
          done(btoa(text));
        }).catch((error) => done("ERROR " + error));
        """,
        url,
    )
    assert not encoded.startswith("ERROR"), encoded
    return base64.b64decode(encoded)


def rendered_pixels(driver: Any, img: Any) -> np.ndarray:
    """An <img> as the page draws it (through a canvas): height x width x RGB."""
    encoded = driver.execute_script(
        """
        const img = arguments[0];
        const canvas = document.createElement("canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        canvas.getContext("2d").drawImage(img, 0, 0);
        return canvas.toDataURL("image/png");
        """,
        img,
    )
    return png_pixels(base64.b64decode(encoded.split(",", 1)[1]))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def blocked_loads(driver: Any) -> list[str]:
    """Console lines of anything the page's Content-Security-Policy refused (an outside fetch)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]]
