"""Runs tests/sharding/multidevice_checks.py on 8 simulated CPU devices in a subprocess (the
device count must be set before jax initializes; this pytest process has initialized it)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SIMULATED = "--xla_force_host_platform_device_count=8"


def run_with_8_devices(args: list[str], timeout: int = 600) -> dict:
    """Run `python *args` with 8 simulated CPU devices; the JSON object its last 'JSON:' line
    carries."""
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {SIMULATED}".strip(),
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=HERE.parent.parent)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
    assert lines, proc.stdout[-2000:]
    return json.loads(lines[-1][len("JSON:"):])


@pytest.fixture(scope="session")
def multidevice():
    """multidevice(case) -> the JSON of multidevice_checks.py CASE (each case runs once)."""
    cache: dict[str, dict] = {}

    def get(case: str) -> dict:
        if case not in cache:
            cache[case] = run_with_8_devices([str(HERE / "multidevice_checks.py"), case])
            assert cache[case]["devices"] == 8
        return cache[case]

    return get
