"""A real ComfyUI for the node pack's tests: one headless server (CPU) runs many workflows.

ComfyUI's source is ``$PORTRAIT_COMFYUI`` (default ``../shared/vendor/ComfyUI`` beside the repository, as
in CI). Its Python environment is made once by ``run_workflow.py`` of ``../shared/tools/comfyui`` (or
``$PORTRAIT_COMFYUI_TOOL``): ComfyUI's requirements and this project, in ``$COMFYUI_VENV`` (default
``~/.cache/portrait-comfyui/venv``). The server puts the repository first on ``PYTHONPATH``, so the code
under test is what runs even when that venv's editable install points at another checkout. The repository
is linked into ``custom_nodes/`` as a user's clone would be.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
COMFYUI = Path(os.environ.get("PORTRAIT_COMFYUI", SHARED / "vendor" / "ComfyUI"))
TOOL = Path(os.environ.get("PORTRAIT_COMFYUI_TOOL", SHARED / "tools" / "comfyui" / "run_workflow.py"))
VENV = Path(os.environ.get("COMFYUI_VENV", Path.home() / ".cache" / "portrait-comfyui" / "venv"))
#: Name of the clone in custom_nodes/ (what a user's `git clone ... portrait` makes).
PACK = "portrait"


def missing() -> str | None:
    """Why the integration tests cannot run here (None: ComfyUI and its runner are present)."""
    if not (COMFYUI / "main.py").is_file():
        return f"ComfyUI not found at {COMFYUI} (set PORTRAIT_COMFYUI to a ComfyUI 0.8 checkout)"
    if not TOOL.is_file():
        return f"ComfyUI's test runner not found at {TOOL} (set PORTRAIT_COMFYUI_TOOL)"
    return None


def comfy_python() -> Path:
    """The Python of ComfyUI's venv (made or refreshed by the shared runner's ``ensure_venv``)."""
    spec = importlib.util.spec_from_file_location("portrait_comfyui_runner", TOOL)
    assert spec is not None and spec.loader is not None
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    python = Path(runner.ensure_venv(VENV, REPO))
    _patch_torchaudio(python)
    return python


#: PyPI's torchaudio is a CUDA build: against the CPU torch its C extension does not load and importing it
#: fails, which takes ComfyUI's audio nodes (LoadAudio) down. Like the runner's torchvision fix, the test
#: venv's torchaudio goes on without its extension (LoadAudio decodes with PyAV, not torchaudio).
_TORCHAUDIO_OLD = "    torch.ops.load_library(paths[0])\n    return True\n"
_TORCHAUDIO_NEW = (
    "    try:  # patched by portrait's tests: CPU torch with a CUDA torchaudio build\n"
    "        torch.ops.load_library(paths[0])\n"
    "    except OSError:\n"
    "        return False\n"
    "    return True\n"
)


def _patch_torchaudio(python: Path) -> None:
    probe = "import importlib.util as u; s = u.find_spec('torchaudio'); print(s.origin if s else '')"
    found = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    if not found.stdout.strip():
        return
    utils = Path(found.stdout.strip()).parent / "_extension" / "utils.py"
    text = utils.read_text() if utils.is_file() else ""
    if _TORCHAUDIO_OLD in text:
        utils.write_text(text.replace(_TORCHAUDIO_OLD, _TORCHAUDIO_NEW))


def _request(url: str, body: dict | None = None, timeout: float = 30) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
    except urllib.error.HTTPError as err:
        return {"http_error": err.code, "body": err.read().decode(errors="replace")[:4000]}
    return json.loads(text) if text.strip() else {}


@dataclass
class Run:
    """One queued workflow: its status, messages, files written and (on error) ComfyUI's error record."""

    status: str
    messages: list = field(default_factory=list)
    outputs: dict[str, list[Path]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    entry: dict[str, Any] = field(default_factory=dict)

    def events(self) -> list[str]:
        return [m[0] for m in self.messages]

    def text(self, node: str) -> str:
        """The text ``node`` showed in the UI (``ui.PreviewText``)."""
        return "\n".join(self.entry.get("outputs", {}).get(node, {}).get("text", []))


class ComfyServer:
    """ComfyUI on 127.0.0.1 with this repository in ``custom_nodes/`` and a fresh base folder."""

    def __init__(self, base: Path, python: Path) -> None:
        self.base, self.python = base, python
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        link = base / "custom_nodes" / PACK
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)
        self.log = base / "server.log"
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 300) -> dict:
        """Start the server; returns ``/object_info`` (every node's definition)."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        command = [
            str(self.python), str(COMFYUI / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
            "--base-directory", str(self.base), "--disable-auto-launch", "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                command, cwd=COMFYUI, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                return _request(f"{self.url}/object_info", timeout=10)
            except (OSError, ValueError):
                time.sleep(1)
        raise RuntimeError(f"ComfyUI did not start:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def queue(self, workflow: dict) -> str:
        answer = _request(f"{self.url}/prompt", {"prompt": workflow, "client_id": "portrait-tests"})
        if "prompt_id" not in answer:
            raise AssertionError(f"ComfyUI refused the workflow: {answer}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> Run:
        """The finished run of ``prompt_id`` (its output files copied nowhere: they stay in ``output/``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = _request(f"{self.url}/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("completed") is not None or status.get("status_str") in ("success", "error"):
                return self._run(entry)
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.5)
        raise TimeoutError(f"workflow {prompt_id} did not finish in {timeout} s:\n{self.log_text()[-3000:]}")

    def _run(self, entry: dict) -> Run:
        status = entry.get("status", {})
        messages = status.get("messages", [])
        outputs: dict[str, list[Path]] = {}
        for node, out in entry.get("outputs", {}).items():
            for items in out.values():
                for item in items if isinstance(items, list) else []:
                    if isinstance(item, dict) and "filename" in item:
                        folder = self.base / item.get("type", "output") / item.get("subfolder", "")
                        outputs.setdefault(node, []).append(folder / item["filename"])
        errors = [m[1] for m in messages if m[0] == "execution_error"]
        return Run(status.get("status_str", ""), messages, outputs, errors[-1] if errors else None, entry)

    def run(self, workflow: dict, timeout: float = 600) -> Run:
        return self.wait(self.queue(workflow), timeout)

    def interrupt(self) -> None:
        _request(f"{self.url}/interrupt", {})

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def copy_inputs(server: ComfyServer, *files: Path) -> None:
    for path in files:
        shutil.copy(path, server.base / "input" / path.name)
