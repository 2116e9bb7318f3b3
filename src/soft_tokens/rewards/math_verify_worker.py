"""The Math-Verify worker process: the client that the reward calls, and the worker loop itself.

Math-Verify (sympy) can run for ever or eat all memory on adversarial answers such as `9^{9^{9}}` or
`(10^{10})!`, and its own timeout (signal.alarm) only works in the main thread and cannot interrupt long C
calls. So verification runs in a child process (one per Python process, shared by all callers) that is
killed and restarted when a check overruns its deadline; the child also caps its own memory and CPU time.
Run as `python -m soft_tokens.rewards.math_verify_worker` this module is that child.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 30.0  # how long to wait for a fresh worker to import Math-Verify
_RETRY_AFTER_S = 30.0  # after a failed start, requests fail fast for this long before the next try
_WORKER_MEMORY_BYTES = 4 << 30
_SRC_DIR = str(Path(__file__).resolve().parents[1])


class _VerifierProcess:
    """Client of the worker: one request at a time, the process is killed when a request overruns."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ready = False
        self._buf = b""
        self._retry_at = 0.0

    def verify(self, pred: str, gold: str, timeout_s: float) -> bool | str:
        """True/False, or an error message; raises TimeoutError, or RuntimeError when no worker can start."""
        with self._lock:
            self._ensure_ready()
            try:
                request = json.dumps([pred, gold, math.ceil(timeout_s) + 2]).encode() + b"\n"
                self._proc.stdin.write(request)
                self._proc.stdin.flush()
                return self._read(time.monotonic() + timeout_s)
            except TimeoutError:
                self._restart()  # now, so that the import overlaps with other work
                raise
            except (OSError, ValueError, RuntimeError) as e:  # the worker died on this answer
                self._restart()
                return f"worker failed: {e!r}"
            except BaseException:  # e.g. KeyboardInterrupt: a reply may still come, drop this worker
                self.close()
                raise

    def _ensure_ready(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            if time.monotonic() < self._retry_at:
                raise RuntimeError("verifier worker unavailable (a recent start failed)")
            self._restart()
        try:
            if self._proc is None:
                raise OSError("could not spawn the verifier worker")
            if not self._ready:
                if self._read(time.monotonic() + _STARTUP_TIMEOUT_S) != "ready":
                    raise ValueError("no ready line")
                self._ready = True
        except (TimeoutError, OSError, ValueError, RuntimeError) as e:
            self.close()
            self._retry_at = time.monotonic() + _RETRY_AFTER_S
            raise RuntimeError(f"verifier worker failed to start: {e!r}") from e

    def _restart(self) -> None:
        self.close()
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_SRC_DIR, os.environ.get("PYTHONPATH")]))
        )
        cmd = [sys.executable, "-m", "soft_tokens.rewards.math_verify_worker"]
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        except OSError as e:
            logger.error("Could not spawn the Math-Verify worker: %r", e)
            return
        self._poll = select.poll()  # not select.select: fds above 1024 are common in training processes
        self._poll.register(self._proc.stdout, select.POLLIN)

    def _read(self, deadline: float) -> bool | str:
        """The next JSON line from the worker; TimeoutError past the deadline."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self._poll.poll(max(1, math.ceil(left * 1000))):
                raise TimeoutError
            chunk = os.read(self._proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError(f"verifier worker exited with code {self._proc.wait()}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def close(self) -> None:
        """Kill the worker, if any."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            with contextlib.suppress(OSError):  # unflushed bytes to a dead worker
                self._proc.stdin.close()
            self._proc.stdout.close()
        self._proc, self._ready, self._buf = None, False, b""


VERIFIER = _VerifierProcess()
atexit.register(VERIFIER.close)
# a forked child must not share the parent's worker pipes (nor a lock held at fork time)
os.register_at_fork(after_in_child=VERIFIER._reset)


def _math_verify(pred: str, gold: str) -> bool:
    """Math-Verify with its (signal-based) timeouts off: the parent process enforces the deadline."""
    from math_verify import parse, verify

    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    return verify(gold_parsed, pred_parsed, timeout_seconds=None)


def _set_soft_limit(resource_id: int, value: int) -> None:
    """Lower a soft resource limit of this process, within the hard limit."""
    import resource

    hard = resource.getrlimit(resource_id)[1]
    resource.setrlimit(resource_id, (value if hard == resource.RLIM_INFINITY else min(value, hard), hard))


def _serve() -> None:
    """Worker loop: a JSON request [pred, gold, cpu_seconds] per stdin line, a JSON reply per stdout line."""
    import resource

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from libraries go to stderr instead of corrupting the replies
    logging.basicConfig(level=logging.ERROR)  # math_verify warns that its timeouts are disabled
    _set_soft_limit(resource.RLIMIT_AS, _WORKER_MEMORY_BYTES)  # MemoryError rather than swapping the node
    _math_verify("1", "1")  # load the grammar and sympy before announcing readiness
    print('"ready"', file=out, flush=True)
    for line in sys.stdin:
        pred, gold, cpu_s = json.loads(line)
        # the kernel kills this process (SIGXCPU) if it is still stuck once the parent is gone
        used = resource.getrusage(resource.RUSAGE_SELF)
        _set_soft_limit(resource.RLIMIT_CPU, int(used.ru_utime + used.ru_stime) + cpu_s)
        try:
            reply = _math_verify(pred, gold)
        except Exception as e:  # MemoryError, RecursionError, sympy and parser errors
            reply = f"{type(e).__name__}: {e}"[:300]
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    _serve()
