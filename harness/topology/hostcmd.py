"""Commands the set-up runs on this machine (apt-get, debootstrap, tar), with their output kept for
the error message when they fail."""

from __future__ import annotations

import os
import subprocess

from harness.errors import HarnessError


def run_checked(argv: list[str], error: type[HarnessError]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise error(f"`{' '.join(argv[:3])} ...` failed with exit code {done.returncode}:\n{tail}")
