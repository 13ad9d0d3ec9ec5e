"""No child outlives its parent, even when the parent gets SIGKILL.

``start_watchdog()`` forks a small process that watches this one. It keeps a fresh list of
this process's descendants (the temporary Prefect server, the vLLM worker, ms-swift,
evalscope, Dask workers, and their children); when this process dies, however it dies, it
stops every one of them still alive (SIGTERM, then SIGKILL), and marks the runs this process
owned CRASHED in the registry. Linux only (it needs PR_SET_PDEATHSIG); elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1


def start_watchdog(registry_path: str | None = None, poll_s: float = 0.5) -> int | None:
    """Fork the watchdog; returns its pid (None where unsupported). Call before threads start."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # the watchdog: never returns
        os.setsid()  # out of the parent's process group: a Ctrl-C there does not stop us early
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _watch(parent, registry_path, poll_s)
    finally:
        os._exit(0)


def _watch(parent: int, registry_path: str | None, poll_s: float) -> None:
    import psutil

    gone = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *a: gone.__setitem__("flag", True))
    try:
        me = psutil.Process(parent)
    except psutil.NoSuchProcess:
        return
    known: dict[int, float] = {}  # pid -> create time (a reused pid is not ours)
    while not gone["flag"] and me.is_running() and me.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in me.children(recursive=True):
                if child.pid != os.getpid():
                    known.setdefault(child.pid, child.create_time())
        except psutil.NoSuchProcess:
            break
        time.sleep(poll_s)
    procs = []
    for pid, created in known.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - created) < 1.0:
                procs.append(p)
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if registry_path and os.path.exists(registry_path):
        import subprocess

        # in a fresh interpreter: this forked process must not use the parent's libraries' state
        code = "import sys; from undercurve.registry import Registry; Registry(sys.argv[1]).reap_crashed()"
        try:
            subprocess.run([sys.executable, "-c", code, registry_path], timeout=180, capture_output=True)
        except (OSError, subprocess.SubprocessError):  # best effort: the next command reaps it too
            pass
