"""The headless-browser harness (testbed/browser.py) on a page served from loopback: Debian's Chromium
runs the page's script, a wait sees the text it changes (and a wait that times out shows the page's
text), a screenshot is saved as a PNG, and Selenium Manager is never asked for a driver (it would try to
download one). A missing chromedriver fails, naming it. No fixture here starts the Docker engines."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.selenium_manager import SeleniumManager
from selenium.webdriver.remote.webdriver import WebDriver

from testbed.browser import PNG_SIGNATURE, BrowserError, browser, screenshot, start_browser, wait_until

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>browser harness</title></head>
<body>
<h1>Browser harness</h1>
<p id="status">waiting for the script</p>
<script>
setTimeout(() => { document.getElementById("status").textContent = "changed by the script"; }, 300);
</script>
</body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:  # the test's output stays quiet
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    """The page, served from 127.0.0.1 on a free port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _status(driver: WebDriver) -> str:
    return driver.find_element(By.ID, "status").text


def test_the_browser_runs_the_pages_script_and_saves_a_screenshot(
    page_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_selenium_manager(self: SeleniumManager, args: list[str]) -> dict[str, str]:
        raise AssertionError(f"Selenium Manager was asked for {args}: it would try to download")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
    with browser(tmp_path) as driver:
        driver.get(page_url)
        assert driver.title == "browser harness"
        wait_until(
            driver, lambda d: _status(d) == "changed by the script", 10, "the script's text after 300 ms"
        )
        shot = screenshot(driver, tmp_path / "shots" / "page.png")
        with pytest.raises(
            AssertionError, match=r"(?s)a text that never comes: not within 0.3 s; .*changed by"
        ):
            wait_until(driver, lambda d: _status(d) == "never", 0.3, "a text that never comes")
    assert shot.is_file()
    assert shot.read_bytes().startswith(PNG_SIGNATURE)


def test_a_missing_chromedriver_fails_naming_it(tmp_path: Path) -> None:
    with pytest.raises(BrowserError, match=r"/no-chromedriver is missing: install Debian's chromium-driver"):
        start_browser(tmp_path, chromedriver=tmp_path / "no-chromedriver")
