"""Runs `embedstore extract` in forked children of one warm process, so that a test can start and
kill -9 a dozen real extraction processes in seconds (importing torch, open_clip and timm costs
several seconds a process; a fork costs milliseconds). The server imports the libraries but runs no
computation and starts no thread of its own before forking.

Protocol, one JSON object a line on stdin, one reply a line on stdout:

- ``{"op": "start", "argv": [...], "env": {...}, "log": PATH}`` -> ``{"pid": N}``: fork a child that
  runs ``embedstore extract ARGV`` with ``env`` added to its environment, stdout and stderr to PATH;
- ``{"op": "wait", "pid": N}`` -> ``{"status": S}``: reap the child; S is its exit code, or minus
  the signal that ended it (-9 after SIGKILL).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import open_clip  # noqa: F401  (imported once here, inherited by every child)
import timm  # noqa: F401
import torch  # noqa: F401

import embedstore.extract.runner  # noqa: F401
import embedstore.models  # noqa: F401
import embedstore.sources  # noqa: F401
from embedstore_cli.extract_command import extract_command


def _child(request: dict) -> None:
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(request.get("env", {}))
    code = 1
    try:
        extract_command.main(args=request["argv"], prog_name="embedstore extract", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported in the child's log, never to the server
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    _reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            pid = os.fork()
            if pid == 0:
                _child(request)
            _reply({"pid": pid})
        elif request["op"] == "wait":
            _, status = os.waitpid(request["pid"], 0)
            _reply({"status": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
