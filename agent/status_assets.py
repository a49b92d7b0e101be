"""The status page's files: ``/`` and ``/static/*``, shipped in ``agent/status_page``.

The page is static: every value it shows comes from ``/status.json`` and is put
into the document as text by ``status.js`` (never as markup), and the
Content-Security-Policy allows scripts, styles and requests from the agent
itself only, no inline code. The chart library (``status_page/vendor``,
fetched at build time by ``packaging/assets.sh``) is optional: without it the
page leaves its script out and shows tables and a note instead of charts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

PAGE_DIR = Path(__file__).parent / "status_page"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
JS, CSS, TEXT = "text/javascript; charset=utf-8", "text/css; charset=utf-8", "text/plain; charset=utf-8"
# URL path -> (file under PAGE_DIR, content type)
STATIC = {
    "/static/status.js": ("status.js", JS),
    "/static/status.css": ("status.css", CSS),
    "/static/uPlot.min.js": ("vendor/uPlot.iife.min.js", JS),
    "/static/uPlot.min.css": ("vendor/uPlot.min.css", CSS),
    "/static/uPlot.LICENSE.txt": ("vendor/LICENSE", TEXT),
}
CHART_LIBRARY = "vendor/uPlot.iife.min.js"
_CHART_TAGS = '<link rel="stylesheet" href="static/uPlot.min.css">\n<script src="static/uPlot.min.js"></script>'
_MARK = "<!-- chart library -->"

Response = tuple[int, str, bytes, dict[str, str]]


class PageAssets:
    """Reads each file once (in a thread, off the loop) and serves it from memory after."""

    def __init__(self, root: Path = PAGE_DIR) -> None:
        self.root = root
        self._cache: dict[str, bytes] = {}

    async def _read(self, name: str) -> bytes | None:
        data = self._cache.get(name)
        if data is None:
            try:
                data = await asyncio.to_thread((self.root / name).read_bytes)
            except OSError:
                return None  # not cached: `make assets` while the agent runs is picked up
            self._cache[name] = data
        return data

    async def index(self) -> Response:
        page = await self._read("index.html")
        if page is None:
            return 404, TEXT, b"status page not installed\n", PAGE_HEADERS
        charts = await self._read(CHART_LIBRARY) is not None
        html = page.decode().replace(_MARK, _CHART_TAGS if charts else "")
        return 200, "text/html; charset=utf-8", html.encode(), PAGE_HEADERS

    async def static(self, path: str) -> Response:
        name, content_type = STATIC[path]
        data = await self._read(name)
        if data is None:
            return 404, TEXT, b"not installed\n", PAGE_HEADERS
        return 200, content_type, data, PAGE_HEADERS
