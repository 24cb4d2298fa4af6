"""Screenshot of an example workflow in ComfyUI's editor (headless Chromium), then one JSON line.

    path/to/ComfyUI/python scripts/comfy_screenshot.py --url http://127.0.0.1:8188 \
        --workflow workflows/comfyui/talking_portrait.json -o docs/images/comfyui_talking_portrait.png

Needs a running ComfyUI with the portrait nodes on this machine, Debian's ``chromium`` and ``aiohttp``
(ComfyUI's Python has it). Chromium is driven over its DevTools protocol on 127.0.0.1: the page loads, the
workflow goes in with ``app.loadGraphData``, and the page is captured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _capture(debug_port: int, workflow: dict, out: Path, settle: float, scale: float) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            try:
                async with session.get(f"http://127.0.0.1:{debug_port}/json") as response:
                    pages = [t for t in await response.json() if t.get("type") == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            counter = iter(range(1, 10**6))

            async def call(method: str, **params: object) -> dict:
                ident = next(counter)
                await ws.send_json({"id": ident, "method": method, "params": params})
                while True:
                    message = await ws.receive_json()
                    if message.get("id") == ident:
                        return message.get("result", {})

            async def evaluate(expression: str) -> object:
                result = await call("Runtime.evaluate", expression=expression, awaitPromise=True)
                return result.get("result", {}).get("value")

            deadline = time.monotonic() + 120
            while not await evaluate("!!(window.app && window.app.graph)"):
                if time.monotonic() > deadline:
                    raise TimeoutError("ComfyUI's editor did not load")
                await asyncio.sleep(0.5)
            await evaluate(f"app.loadGraphData({json.dumps(workflow)}).then(() => true)")
            # The whole graph at a zoom where the editor still draws the widgets' text, clear of its side bar
            # and tabs (screen = (graph + offset) · scale).
            offset = round(130 / scale)
            view = f"app.canvas.ds.scale = {scale}; app.canvas.ds.offset = [{offset}, {offset}];"
            await evaluate(view + " app.canvas.setDirty(true, true)")
            for kind in ("keyDown", "keyUp"):  # close a dialog the editor may open on a first visit
                await call(
                    "Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27
                )
            await asyncio.sleep(settle)
            shot = await call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))


def _skip_first_visit(url: str) -> None:
    """Tell ComfyUI this user has seen its welcome (no templates dialog over the graph)."""
    import urllib.request

    request = urllib.request.Request(
        f"{url}/api/settings/Comfy.TutorialCompleted", data=b"true", method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the running ComfyUI (127.0.0.1 or localhost)")
    parser.add_argument("--workflow", type=Path, required=True, help="an editor-format workflow (NAME.json)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--size", default="1800,1000", help="window WIDTH,HEIGHT (default 1800,1000)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to let the graph draw")
    parser.add_argument("--scale", type=float, default=0.7, help="the editor's zoom (default 0.7)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        parser.error("--url must be a ComfyUI on this machine")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        parser.error("needs Debian's chromium (apt-get install chromium)")
    _skip_first_visit(args.url)
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="comfy-shot-")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
        "--remote-debugging-address=127.0.0.1", f"--window-size={args.size}", args.url,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workflow = json.loads(args.workflow.read_text())
        asyncio.run(
            asyncio.wait_for(_capture(port, workflow, args.output, args.settle, args.scale), timeout=300)
        )
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps({"screenshot": str(args.output), "bytes": args.output.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
