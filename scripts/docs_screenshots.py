"""Open the built documentation site (site/, from `mkdocs build`) in headless Chromium: every
page must load without a console error, a page error or a failed request, and the home page
and one API page are saved as screenshots under docs/screenshots/ (the README shows them).

    pip install -e ".[docs]" playwright && mkdocs build --strict && python scripts/docs_screenshots.py

Needs Playwright's Python package and a Chromium: its own (`playwright install chromium`) or the
system's (`--chromium /usr/bin/chromium`, e.g. Debian's `apt install chromium`). Exits 1 naming
each page with an error.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOTS = {"": "home.png", "api/fnn/": "api-fnn.png"}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", default=str(ROOT / "site"), help="the built site (default site/)")
    parser.add_argument(
        "--out",
        default=str(ROOT / "docs" / "screenshots"),
        help="where the screenshots go (default docs/screenshots/)",
    )
    parser.add_argument(
        "--chromium",
        default=shutil.which("chromium"),
        help="a Chromium executable (default: chromium on PATH, else Playwright's)",
    )
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    site = Path(args.site)
    pages = sorted(str(p.parent.relative_to(site)) for p in site.rglob("index.html"))
    pages = ["" if p == "." else p + "/" for p in pages]
    handler = functools.partial(_Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox"] if args.chromium else []
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        for path in pages:
            errors = []  # the handlers below are called while this page loads, in this iteration
            on_console = lambda m: m.type == "error" and errors.append(f"console: {m.text}")  # noqa: B023
            on_error = lambda e: errors.append(f"page error: {e}")  # noqa: B023
            on_failed = lambda r: errors.append(f"request failed: {r.url} {r.failure}")  # noqa: B023
            page.on("console", on_console)
            page.on("pageerror", on_error)
            page.on("requestfailed", on_failed)
            response = page.goto(base + path, wait_until="networkidle")
            if response is None or not response.ok:
                errors.append(f"status {response.status if response else 'none'}")
            if path in SHOTS:
                page.screenshot(path=str(out / SHOTS[path]))
            for event, f in (
                ("console", on_console),
                ("pageerror", on_error),
                ("requestfailed", on_failed),
            ):
                page.remove_listener(event, f)
            if errors:
                failed[path or "/"] = errors
        browser.close()
    server.shutdown()
    print(
        f"{len(pages)} pages opened in headless Chromium, {len(failed)} with errors; "
        f"screenshots: {', '.join(str(out / s) for s in SHOTS.values())}"
    )
    for path, errors in failed.items():
        print(f"  {path}: " + "; ".join(errors))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
