"""Helpers of the reliability suite: a warm server of extraction processes, argv, store snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from embedstore.store import Store

SERVER_SCRIPT = Path(__file__).with_name("extraction_server.py")
TINY_CLIP = "openclip:embedstore-tiny@random"
TINY_TIMM = "timm:test_vit@random"
QUIET = {"log": lambda message: None, "progress": False}


@dataclass
class Child:
    """One `embedstore extract` process started by the server."""

    pid: int
    log: Path

    def kill(self) -> None:
        """SIGKILL (kill -9). A child that already ended is a zombie until reaped: the signal is lost."""
        os.kill(self.pid, signal.SIGKILL)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


class ExtractionServer:
    """Client of ``extraction_server.py``: real extraction processes, forked from a warm parent."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started = 0
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self._read() == {"ready": True}

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the extraction server died (exit code {self.process.wait()})")
        return json.loads(line)

    def _request(self, message: dict) -> dict:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self._read()

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.started += 1
        log = self.log_dir / f"child-{self.started}.log"
        reply = self._request({"op": "start", "argv": [str(a) for a in argv], "env": env or {}, "log": str(log)})
        return Child(reply["pid"], log)

    def wait(self, child: Child) -> int:
        """The child's exit code, or -9 when SIGKILL ended it."""
        return self._request({"op": "wait", "pid": child.pid})["status"]

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
        child = self.start(argv, env)
        return self.wait(child), child.output()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def extract_argv(store: Path, models: tuple[str, ...], datasets: tuple[str, ...], *settings: str) -> list[str]:
    """Arguments of `embedstore extract` for the given models and ``NAME=KIND:PATH`` datasets."""
    argv = ["--store", str(store), "--no-progress", "--workers", "0", *settings]
    for model in models:
        argv += ["--model", model]
    for dataset in datasets:
        argv += ["--dataset", dataset]
    return argv


def store_snapshot(path: Path) -> dict:
    """What a store holds: every row of every catalog table, and the sha256 of every file of the
    arrays root (chunks, done-markers, metadata)."""
    store = Store.open(path)
    tables = [r["table_name"] for r in store.query("SELECT table_name FROM information_schema.tables ORDER BY 1")]
    catalog = {}
    for table in tables:
        rows = store.query(f'SELECT * FROM "{table}"')
        catalog[table] = sorted(json.dumps(row, sort_keys=True, default=str) for row in rows)
    root = Path(store.arrays.location)
    files = {
        str(file.relative_to(root)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(root.rglob("*"))
        if file.is_file()
    }
    return {"catalog": catalog, "arrays": files}
