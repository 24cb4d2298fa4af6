"""Launching the web demo: flags, exposure warnings, weights check, engine start (``portrait-gen app``).

The widgets live in :mod:`portrait.app.ui` (the top-level ``app.py`` only launches it); the rendering in
:mod:`portrait.app.handler`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from portrait.app.handler import (
    AUTH_ENV,
    DEFAULT_HOST,
    DEFAULT_MAX_CUSTOM_EMOTIONS,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_SECONDS,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    LOOPBACK_HOSTS,
    Studio,
)
from portrait.app.workspace import Workspace
from portrait.cli.common import add_runtime_arguments, runtime_values
from portrait.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaunchOptions:
    """How to serve the page (the launcher's flags)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    share: bool = False
    auth: tuple[str, str] | None = None
    max_file_size: str = DEFAULT_MAX_FILE_SIZE
    queue_size: int = DEFAULT_QUEUE_SIZE


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """``"user:pass"`` → ``("user", "pass")``; None/empty → None."""
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--auth must be USER:PASSWORD with both parts non-empty")
    return user, password


def exposure_warnings(options: LaunchOptions) -> list[str]:
    """Warnings for a page reachable from other machines without a password."""
    if options.auth is not None:
        return []
    out = []
    if options.share:
        out.append("--share publishes the demo on a public gradio.live URL without a password; add --auth")
    if options.host not in LOOPBACK_HOSTS:
        out.append(f"--host {options.host} exposes the demo to the network without a password; add --auth")
    return out


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``python app.py`` / ``portrait-gen app``."""
    net = parser.add_argument_group("serving")
    net.add_argument("--host", default=DEFAULT_HOST, help="interface (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    net.add_argument("--share", action="store_true", help="also publish a public gradio.live link")
    net.add_argument("--auth", default=None, metavar="USER:PASS", help=f"require a login (or ${AUTH_ENV})")
    net.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload (default 25mb)")
    net.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS, help="longest audio (60)")
    net.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="most waiting requests (16)")
    net.add_argument(
        "--allow-save-emotion", action="store_true",
        help="offer 'Save as emotion', which writes visitors' emotions into the weights tree (needs --auth)",
    )  # fmt: skip
    net.add_argument(
        "--max-custom-emotions", type=int, default=DEFAULT_MAX_CUSTOM_EMOTIONS, metavar="N",
        help=f"most custom emotions 'Save as emotion' may leave in the bank ({DEFAULT_MAX_CUSTOM_EMOTIONS})",
    )  # fmt: skip
    add_runtime_arguments(parser.add_argument_group("runtime"))


Serve = Callable[[Studio, LaunchOptions], Any]


def run_app(args: argparse.Namespace, serve: Serve | None = None) -> int:
    """Build the config, load the engine once, then serve the page (blocks until it is closed).

    ``serve(studio, options)``: default :func:`portrait.app.ui.serve` (imported only then: it loads gradio).
    """
    from portrait.config import load_config

    if args.max_seconds <= 0:
        raise ConfigError(f"--max-seconds must be > 0, got {args.max_seconds}")
    auth = parse_auth(args.auth or os.environ.get(AUTH_ENV))
    save = bool(getattr(args, "allow_save_emotion", False))
    if save and auth is None:
        raise ConfigError(
            "--allow-save-emotion lets visitors write into the weights tree: it needs --auth USER:PASS (or "
            f"${AUTH_ENV})"
        )
    max_custom = getattr(args, "max_custom_emotions", DEFAULT_MAX_CUSTOM_EMOTIONS)
    if max_custom < 0:
        raise ConfigError(f"--max-custom-emotions must be >= 0, got {max_custom}")
    options = LaunchOptions(args.host, args.port, bool(args.share), auth, args.max_file_size, args.queue_size)
    for warning in exposure_warnings(options):
        logger.warning(warning)
    cfg = load_config(files=args.config, overrides=args.overrides, values=runtime_values(args))
    serve = serve or _app_serve()
    workspace = Workspace()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workspace.root / "gradio"))  # uploads stay private too
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, --offline or not
    from portrait.weights.hub import ensure_weights
    from portrait.weights.load import resolve_weights_root

    ensure_weights(resolve_weights_root(cfg.runtime.weights), offline=cfg.runtime.offline or None)
    studio = Studio(cfg, detector=args.detector, max_seconds=args.max_seconds, workspace=workspace,
                    save_emotions=save, max_custom_emotions=max_custom)  # fmt: skip
    studio.engine()
    if threading.current_thread() is threading.main_thread():  # SIGTERM closes like Ctrl-C (then atexit)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    serve(studio, options)
    return 0


def _app_serve() -> Serve:
    """``serve`` of the packaged UI (imported late: it is the only module that imports gradio)."""
    from portrait.app.ui import serve

    return serve
