#!/usr/bin/env python
"""Screenshot the web demo: launch app.py on a free localhost port with tiny weights, shoot it with headless
Chromium, write the PNG.

    python scripts/app_screenshot.py [--out app_screenshot.png] [--weights DIR] [--size 1280x1800]

Without ``--weights`` a tiny random-weight tree is written to a temporary folder. Needs gradio and a Chromium
binary (Debian: ``apt-get install chromium``); runs offline.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: Offline, quiet headless Chromium (see ENVIRONMENT.md).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def screenshot(
    url: str, out: Path, size: str, browser: str, wait_ms: int = 8000, timeout: float = 120
) -> None:
    """Render ``url`` in headless Chromium (``wait_ms`` of virtual time for the page's JavaScript)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [
            browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size.replace('x', ',')}",
            f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url,
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0 or not out.is_file():
        tail = "\n".join(result.stderr.splitlines()[-10:])
        raise RuntimeError(f"chromium failed (exit {result.returncode}):\n{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("app_screenshot.png"), help="PNG to write")
    parser.add_argument("--weights", type=Path, default=None, help="weights tree (default: tiny, temporary)")
    parser.add_argument("--size", default="1280x1800", help="browser window WIDTHxHEIGHT")
    parser.add_argument("--browser", default=None, help="Chromium binary (default: found on PATH)")
    args = parser.parse_args(argv)
    browser = args.browser or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        print("error: no chromium on PATH; apt-get install chromium", file=sys.stderr)
        return 1
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(REPO))
    from portrait.app import ui as app
    from portrait.app.handler import Studio
    from portrait.app.launch import LaunchOptions
    from portrait.config import load_config

    with tempfile.TemporaryDirectory(prefix="portrait-shot-") as scratch:
        weights = args.weights
        if weights is None:
            from portrait.testing.trees import write_tiny_weights

            weights = write_tiny_weights(Path(scratch) / "tiny", layout="portrait", seed=0)
        os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(scratch) / "gradio"))
        studio = Studio(load_config(values={"runtime.weights": str(weights)}), detector="dlib")
        demo = app.serve(studio, LaunchOptions(port=free_port()), block=False)
        try:
            screenshot(demo.local_url, args.out.resolve(), args.size, browser)
        finally:
            demo.close()
            studio.workspace.cleanup()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
