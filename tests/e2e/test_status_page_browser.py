"""The status page in a real headless Chromium (Debian's chromium and chromium-driver, through selenium).

The page renders, its charts are drawn with data, nothing is requested from anywhere but the agent,
the browser's console stays free of errors (a Content-Security-Policy violation is one), a log file
named like markup stays text, and a screenshot of a chart shows the series' colour. Without the chart
library the page still shows its tables and says why there are no charts.

Chromium comes from ``tests/peers/install_browser.sh`` (``make peers``) and the chart library from
``make assets``: when either is missing the test is skipped, or fails under HOSTWATCH_REQUIRE_PEERS (CI).
Set HOSTWATCH_SCREENSHOT_DIR to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zlib
from pathlib import Path

import pytest

from agent.status_assets import CHART_LIBRARY, PAGE_DIR
from tests.e2e.test_status_page import HOSTILE_NAME, SECRET, status_agent, wait_for_history

pytestmark = pytest.mark.e2e

SERIES_RGB = (0x25, 0x63, 0xEB)  # status.js: COLOURS[0], each chart's first series
# status.js: COLOURS[0:3]; an idle series lies under the next one drawn at zero, so any of them counts
PALETTE = [(0x25, 0x63, 0xEB), (0xF5, 0x9E, 0x0B), (0xDC, 0x26, 0x26)]
HOST_CHARTS = ("cpu", "memory", "disk", "network")


def need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("HOSTWATCH_REQUIRE_PEERS", "") not in ("", "0"):
        pytest.fail(f"{reason} (HOSTWATCH_REQUIRE_PEERS is set)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path: Path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    need(bool(chromium and driver_path), "chromium and chromium-driver are not installed: run `make peers`")
    need((PAGE_DIR / CHART_LIBRARY).is_file(), "the chart library is not fetched: run `make assets`")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1900",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # both paths are given: selenium must fetch nothing
    driver = webdriver.Chrome(options=options, service=Service(driver_path, log_output=str(tmp_path / "driver.log")))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_until(driver, script: str, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not in {timeout:g}s (last {value!r}); console: {driver.get_log('browser')}")


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and rows of RGBA (or RGB) pixels of an 8-bit, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and interlace == 0, header
    bpp = 4 if colour == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up = previous[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                corner = previous[i - bpp] if i >= bpp else 0
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(
            bytes(line) if bpp == 4 else bytes(b for px in zip(*[iter(line)] * 3, strict=True) for b in (*px, 255))
        )
        previous = line
    return width, height, rows


def colour_pixels(png: bytes, rgb: tuple[int, int, int], tolerance: int = 40) -> tuple[int, int]:
    """(pixels close to ``rgb``, distinct colours) in a screenshot."""
    width, _, rows = decode_png(png)
    close, colours = 0, set()
    for row in rows:
        for x in range(width):
            r, g, b = row[4 * x : 4 * x + 3]
            colours.add((r, g, b))
            if abs(r - rgb[0]) + abs(g - rgb[1]) + abs(b - rgb[2]) <= tolerance:
                close += 1
    return close, len(colours)


def keep(name: str, png: bytes, tmp_path: Path) -> None:
    folder = Path(os.environ.get("HOSTWATCH_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(png)


# pixels of the series' colours in each chart's canvas, read back from the canvas itself
CANVAS_PIXELS = """
const palette = arguments[0];
const out = {};
for (const fig of document.querySelectorAll(".charts figure")) {
  const canvas = fig.querySelector("canvas");
  if (!canvas) { out[fig.id] = -1; continue; }
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < data.length; i += 4)
    for (const [r, g, b] of palette)
      if (data[i + 3] > 200 && Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40) n++;
  out[fig.id] = n;
}
return out;
"""


def test_status_page_in_headless_chromium(tmp_path: Path, prometheus, browser) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    agent = status_agent(tmp_path, prometheus.remote_write_url).start()
    try:
        wait_for_history(agent, points=6)
        browser.get(agent.base + "/")
        wait_until(
            browser,
            "return document.querySelectorAll('.charts canvas').length >= 6"
            " && document.querySelector('#outputs').textContent.includes('prometheus')",
            "charts and tables rendered",
        )
        time.sleep(0.5)  # uPlot draws on the next animation frame
        pixels = browser.execute_script(CANVAS_PIXELS, PALETTE)
        assert set(pixels) >= {f"chart-{name}" for name in HOST_CHARTS} | {"output-chart-prometheus"}, pixels
        for figure, count in pixels.items():
            assert count > 100, f"{figure}: no series drawn ({pixels})"

        text = browser.execute_script("return document.body.innerText")
        assert "READY" in text.upper() and "prometheus" in text and "unreachable" in text
        assert HOSTILE_NAME in text  # the log file's name, as text
        assert browser.execute_script("return document.querySelectorAll('img, script:not([src])').length") == 0
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert  # noqa: B018 (the property raises when there is none)
        assert SECRET not in browser.page_source
        assert browser.execute_script("return document.getElementById('no-charts').hidden") is True

        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
        # the page's network requests (not the browser's own chrome:// pages): the agent's, nobody else's
        fetched = [u for u in requested_urls(browser) if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]
        assert agent.base + "/status.json" in fetched and agent.base + "/static/uPlot.min.js" in fetched
        foreign = [u for u in fetched if not u.startswith(agent.base + "/")]
        assert foreign == [], foreign

        page_png = browser.get_screenshot_as_png()
        keep("status-page.png", page_png, tmp_path)
        chart_png = browser.find_element("id", "chart-cpu").screenshot_as_png
        keep("status-cpu-chart.png", chart_png, tmp_path)
        series, colours = colour_pixels(chart_png, SERIES_RGB)
        assert series > 50, f"the CPU chart's screenshot shows {series} pixels of its first series"
        assert colours > 20, f"the CPU chart's screenshot is nearly blank ({colours} colours)"

        # without the chart library (blocked here): tables, no charts, and a note saying why
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["*uPlot.min.js"]})
        browser.get(agent.base + "/")
        wait_until(browser, "return document.querySelector('#outputs').textContent.includes('prometheus')", "tables")
        assert browser.execute_script("return document.querySelectorAll('canvas').length") == 0
        assert browser.find_element("id", "no-charts").is_displayed()
        assert "user" in browser.find_element("id", "host-now").text  # the charts' latest values, as text
        assert HOSTILE_NAME in browser.execute_script("return document.getElementById('log-files').innerText")
        others = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "uPlot.min.js" not in e["message"]
        ]
        assert others == [], others
        keep("status-page-no-charts.png", browser.get_screenshot_as_png(), tmp_path)
    finally:
        agent.stop()
