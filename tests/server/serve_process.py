"""Starting and stopping a real `aidungeon serve` process on a loopback port, for the tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    url: str
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`aidungeon ARGS` in a fresh process with its own data folder."""
    return subprocess.run(
        [sys.executable, "-m", "aidungeon", *args], env=_env(home), capture_output=True, text=True, timeout=timeout
    )


def start_serve(home: Path, model: Path, *args: str, db: str | None = None, wait: float = 120) -> ServeProcess:
    """Start `aidungeon serve` on a free loopback port and wait until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"serve-{time.monotonic_ns()}.log"
    command = [sys.executable, "-m", "aidungeon", "serve", "--model", str(model), "--port", "0", *args]
    if db:
        command += ["--db", db]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=_env(home), stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        found = re.search(r"serving at (http://\S+?)/ ", log.read_text(errors="replace"))
        if found and _answers(found.group(1)):
            return ServeProcess(process, found.group(1), log)
        if process.poll() is not None:
            raise RuntimeError(f"aidungeon serve exited: {log.read_text(errors='replace')}")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"aidungeon serve did not start: {log.read_text(errors='replace')}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AIDUNGEON_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env
