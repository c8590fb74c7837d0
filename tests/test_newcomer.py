"""The README's commands work as written on a fresh machine: installing from a checkout, and the
example against a running server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from tests.serving import parley_serve

ROOT = Path(__file__).resolve().parent.parent


def test_pip_installs_the_client_and_the_server_from_a_checkout(tmp_path: Path) -> None:
    """README: `pip install ./client ./server` (parley-client is not on PyPI, so the server
    alone cannot be resolved)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "./client", "./server"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-3000:]
    assert (
        "serve"
        in subprocess.run(
            [str(venv / "bin" / "parley"), "--help"], capture_output=True, text=True, check=True
        ).stdout
    )


async def test_the_example_runs_against_a_server(tmp_path: Path) -> None:
    """README: `.venv/bin/python examples/typed_usage.py HOST:PORT`."""
    async with parley_serve(f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}") as server:
        example = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "typed_usage.py"), server.target,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(example.communicate(), 60)
    assert example.returncode == 0, stderr.decode()
    assert "gone: SESSION_NOT_FOUND" in stdout.decode()
