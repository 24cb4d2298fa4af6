"""Launch variables from the environment (issue 25, finding 14): a bad ``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK`` or ``PORTRAIT_DIST_TIMEOUT`` is one clear error, never a traceback or a hung collective."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_support import FAST, PORTRAIT, SPEECH

from portrait.distributed.group import TIMEOUT_ENV, launch_from_env, timeout_from_env
from portrait.errors import DistributedError


@pytest.mark.parametrize(
    "env, message",
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, "RANK=-1 must be between 0 and"),
        ({"WORLD_SIZE": "99999999999999999999", "RANK": "0"}, "WORLD_SIZE=99999999999999999999 must be"),
        ({"WORLD_SIZE": "2", "RANK": "5"}, "rank 5 is outside world size 2"),
        ({"WORLD_SIZE": "2"}, "RANK is not set"),
        ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1", "SLURM_LOCALID": "1.5"}, "SLURM_LOCALID='1.5'"),
    ],
)
def test_bad_launch_variables_are_one_distributed_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(DistributedError, match=message):
        launch_from_env(env)


@pytest.mark.parametrize("value", ["nan", "inf", "-5", "0", "1e400", "ten", "9999999999"])
def test_bad_timeouts_are_refused(value: str) -> None:
    with pytest.raises(DistributedError, match=f"{TIMEOUT_ENV}="):
        timeout_from_env({TIMEOUT_ENV: value})
    assert timeout_from_env({TIMEOUT_ENV: "90"}) == 90.0


def test_a_bad_world_size_is_one_error_line_in_the_cli(hostile_weights: Path, tmp_path: Path) -> None:
    args = ["--weights", str(hostile_weights), "--image", str(PORTRAIT), "--audio", str(SPEECH)]
    args += ["-o", str(tmp_path / "out.mp4"), "--device", "cpu", *FAST]
    cli = "import sys; from portrait.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "WORLD_SIZE": "lots", "RANK": "0"}
    result = subprocess.run(
        [sys.executable, "-c", cli, *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "WORLD_SIZE='lots' is not an integer" in errors[0]
    assert not (tmp_path / "out.mp4").exists()
