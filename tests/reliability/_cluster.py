"""Launches localhost worker processes with TF_CONFIG (test helper)."""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def free_ports(n):
    """`n` distinct TCP ports that are free on 127.0.0.1 right now."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    return ports


def worker_env(cluster, index, extra=None):
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": cluster},
        "task": {"type": "worker", "index": index},
    })
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("KERAS_BACKEND", "tensorflow")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra or {})
    return env


def single_env():
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def start(args, env, log_path):
    """Starts `python -m tests.reliability._mw_worker ARGS`."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability._mw_worker", *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_all(procs, timeout):
    """Waits for every process; kills all of them past `timeout` seconds.

    Returns `(return_codes, elapsed_seconds, timed_out)`.
    """
    t0 = time.monotonic()
    timed_out = False
    for p in procs:
        left = timeout - (time.monotonic() - t0)
        try:
            p.wait(timeout=max(left, 0.1))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
    if timed_out:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], time.monotonic() - t0, timed_out


def run_cluster(num_workers, args, tmp_path, *, timeout=300, per_worker=None):
    """Runs `num_workers` workers (args + per_worker[i]) to completion.

    Returns `(return_codes, logs, elapsed, timed_out)`.
    """
    ports = free_ports(num_workers)
    cluster = [f"127.0.0.1:{p}" for p in ports]
    procs, paths = [], []
    for i in range(num_workers):
        path = os.path.join(str(tmp_path), f"worker{i}.log")
        extra = list(per_worker[i]) if per_worker else []
        procs.append(start([*args, *extra], worker_env(cluster, i), path))
        paths.append(path)
    codes, elapsed, timed_out = wait_all(procs, timeout)
    logs = [open(p).read() for p in paths]
    return codes, logs, elapsed, timed_out


def result_line(log):
    """The JSON result line a worker prints on success."""
    for line in log.splitlines():
        if line.startswith("{") and '"examples_per_s"' in line:
            return json.loads(line)
    raise AssertionError(f"no result line in worker log:\n{log[-3000:]}")
