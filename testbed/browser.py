"""Headless Chromium for browser tests: Debian's ``chromium`` driven by Selenium through Debian's
``chromedriver`` (both installed by scripts/bootstrap.sh), with nothing downloaded at run time.

Selenium is given both paths (/usr/bin/chromedriver in its Service, /usr/bin/chromium as the binary):
with a driver path in the Service, Selenium skips Selenium Manager, whose browser and driver downloads
could not work here (only the package registries are reachable). SE_OFFLINE, Selenium Manager's own
offline switch, is not set: Selenium's Python code and chromedriver never read it, and Selenium Manager
never runs (tests/integration/test_browser_harness.py checks that). SE_CHROMEDRIVER, which Selenium
would prefer to the Service's path, is refused unless it names the same driver.

The browser starts with the flags TESTING.md ("More real parts from Debian's packages") asks for:
``--headless`` (no display here), ``--no-sandbox`` (the tests run as root, where Chromium refuses to
start with its sandbox), ``--disable-gpu`` (no GPU), and ``--disable-quic --no-first-run
--disable-background-networking --disable-component-update --disable-sync``, without which Chromium
keeps trying the network (first-run pages, component and variations updates, sync). Those flags are
not enough: Chromium 156 still looked up Google's and DuckDuckGo's names through the machine's
resolver (seen with strace), so :data:`LOOPBACK_ONLY` makes every name but loopback ones unresolvable
inside the browser; after it, strace saw no DNS query, and only connections to loopback (plus
Chromium's IPv6 route probe, a UDP connect() to 2001:4860:4860::8888 that sends nothing). Each browser
has a fresh ``--user-data-dir`` under the test's folder, so no profile, cache or cookie is shared
between tests, and a 1280x900 window (the page's viewport, and so a screenshot, is 1280x757).

Debian's /usr/bin/chromium is a wrapper script that adds the flags of /etc/chromium.d
(``--disable-pings``, ``--no-default-browser-check``, ...); where /dev/shm is mounted twice, its
shared-memory check prints ``[: ...: unexpected operator`` into chromedriver's log, harmlessly.

A missing chromium or chromedriver fails the test with :class:`BrowserError` naming the binary and its
package: a browser test is never skipped.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium
CHROMEDRIVER = Path("/usr/bin/chromedriver")  # Debian's chromium-driver
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Beyond TESTING.md: with its flags alone Chromium 156 still asked the machine's DNS resolver (not on
# loopback) for clients2.google.com, update.googleapis.com, accounts.google.com,
# optimizationguide-pa.googleapis.com and start.duckduckgo.com (Debian's default search engine) within
# seconds of starting. With this, every name is "not found" inside the browser but localhost, 127.* and
# ::1 (an IP address is matched too: without the EXCLUDEs even http://127.0.0.1/ fails).
LOOPBACK_ONLY = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.*, EXCLUDE ::1"
WINDOW_SIZE = (1280, 900)
PAGE_TEXT_LIMIT = 2000  # characters of the page's visible text shown when a wait times out
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

T = TypeVar("T")


class BrowserError(RuntimeError):
    """Chromium or chromedriver is missing, or the browser did not start."""


def _require(binary: Path, package: str) -> None:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise BrowserError(
            f"{binary} is missing: install Debian's {package} package (scripts/bootstrap.sh does)"
        )


def start_browser(
    tmp: Path, *, chromium: Path = CHROMIUM, chromedriver: Path = CHROMEDRIVER
) -> webdriver.Chrome:
    """A headless Chromium with its own new profile folder under ``tmp`` (and chromedriver's log,
    ``chromedriver-*.log``, beside it). The caller quits it: :func:`browser` does so itself."""
    _require(chromium, "chromium")
    _require(chromedriver, "chromium-driver")
    override = os.environ.get("SE_CHROMEDRIVER")
    if override and Path(override) != chromedriver:
        raise BrowserError(f"SE_CHROMEDRIVER={override} would replace {chromedriver}: unset it")
    tmp.mkdir(parents=True, exist_ok=True)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp))
    log = profile.with_name(profile.name.replace("chromium-profile-", "chromedriver-") + ".log")

    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(LOOPBACK_ONLY)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WINDOW_SIZE[0]},{WINDOW_SIZE[1]}")
    # chromedriver is on loopback: never a proxy. Selenium deprecates this for a ClientConfig, which
    # webdriver.Chrome does not take (4.51), so the option stays and its warning is silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        options.ignore_local_proxy_environment_variables()
    service = Service(executable_path=str(chromedriver), log_output=str(log))
    try:
        return webdriver.Chrome(options=options, service=service)
    except WebDriverException as error:
        raise BrowserError(
            f"{chromium} did not start through {chromedriver} (log: {log}): {error}"
        ) from error


@contextmanager
def browser(tmp: Path) -> Iterator[webdriver.Chrome]:
    """:func:`start_browser`, quit (browser and chromedriver ended) when the block ends."""
    driver = start_browser(tmp)
    try:
        yield driver
    finally:
        driver.quit()


def visible_text(driver: WebDriver) -> str:
    """The text the page shows (its body's rendered text), or why it could not be read."""
    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except WebDriverException as error:
        return f"(the page's text could not be read: {error.msg or type(error).__name__})"


def wait_until(
    driver: WebDriver, predicate: Callable[[WebDriver], Literal[False] | T], timeout: float, what: str
) -> T:
    """``predicate(driver)``'s first truthy value, polled every 0.1 s for ``timeout`` seconds. On timeout
    an AssertionError names ``what`` and shows the page's address and the first 2000 characters of its
    visible text."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(predicate)
    except TimeoutException:
        try:
            page = driver.current_url
        except WebDriverException:
            page = "the page"
        text = visible_text(driver)
        shown = text[:PAGE_TEXT_LIMIT] + (" [...]" if len(text) > PAGE_TEXT_LIMIT else "")
        raise AssertionError(f"{what}: not within {timeout} s; {page} shows:\n{shown}") from None


def screenshot(driver: WebDriver, path: Path) -> Path:
    """What the page's viewport shows, saved as a PNG file at ``path`` (its folder made if needed)."""
    png = driver.get_screenshot_as_png()
    if not png.startswith(PNG_SIGNATURE):
        raise BrowserError(f"the screenshot for {path} is not a PNG (starts with {png[:8]!r})")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path
