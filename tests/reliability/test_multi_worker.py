"""MultiWorkerMirroredStrategy on two localhost worker processes.

Each test launches `tests/reliability/_mw_worker.py` processes with a
`TF_CONFIG` naming 127.0.0.1 ports picked free at run time, and bounds
every wait: a worker that cannot reach or loses its peer must end with a
clear error, never hang.
"""

import datetime
import time

import numpy as np
import pytest

from tests.reliability import _cluster

# Two workers on the same global batches as one worker: the sums of the
# per-worker gradients are reduced in another order than one worker's
# batch sums, so weights agree to float32 round-off, not bit for bit
# (observed max |diff| 1.3e-6 after 12 Adam steps).
ATOL = 2e-5
RTOL = 1e-4


def _load(path):
    with np.load(path) as f:
        return [f[f"w{i}"] for i in range(len(f.files))]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["text", "text-fused", "scope"])
def test_two_workers_match_one_worker(model, tmp_path):
    args = ["--model", model, "--steps", "12", "--batch-size", "16",
            "--deadline", "240"]
    single = _cluster.start(
        [*args, "--out", str(tmp_path / "single.npz")],
        _cluster.single_env(), str(tmp_path / "single.log"),
    )
    codes, logs, elapsed, timed_out = _cluster.run_cluster(
        2, args, tmp_path, timeout=300,
        per_worker=[["--out", str(tmp_path / f"w{i}.npz")] for i in (0, 1)],
    )
    (single_code,), _, single_timed_out = _cluster.wait_all([single], 300)
    assert not timed_out and codes == [0, 0], "\n".join(
        log[-3000:] for log in logs)
    assert not single_timed_out and single_code == 0, open(
        tmp_path / "single.log").read()[-3000:]

    reference = _load(tmp_path / "single.npz")
    w0, w1 = _load(tmp_path / "w0.npz"), _load(tmp_path / "w1.npz")
    assert len(w0) == len(reference) > 0
    for i, (a, b, r) in enumerate(zip(w0, w1, reference)):
        # The workers hold the same (mirrored) variables exactly.
        np.testing.assert_array_equal(a, b, err_msg=f"weight {i}")
        np.testing.assert_allclose(a, r, rtol=RTOL, atol=ATOL,
                                   err_msg=f"weight {i}")
    # Training happened: the weights moved away from their initial values.
    result = _cluster.result_line(logs[0])
    assert result["num_workers"] == 2 and result["steps"] == 12
    if model == "scope":  # built of factors, not full matrices
        assert [w.shape for w in reference[:2]] == [(500, 4), (4, 16)]


def test_worker_without_leader_fails_fast(tmp_path):
    """Task 1 of 2, alone: the worker ends with a clear error, never hangs.

    Usually TensorFlow's register timeout (3 s) ends it with
    `DeadlineExceededError` from `RegisterTask`. Sometimes TensorFlow is
    still waiting to register when that timeout has passed (on TF 2.19
    every time; on TF 2.16 once in ~7 CI runs and once in 6 runs of this
    test alone), and the watchdog ends it at its deadline with the
    stack of the strategy's start-up (docs/RELIABILITY.md).
    """
    deadline = 30
    ports = _cluster.free_ports(2)
    cluster = [f"127.0.0.1:{p}" for p in ports]
    proc = _cluster.start(
        ["--register-timeout", "3", "--deadline", str(deadline)],
        _cluster.worker_env(cluster, 1), str(tmp_path / "w1.log"),
    )
    (code,), elapsed, timed_out = _cluster.wait_all([proc], 120)
    log = open(tmp_path / "w1.log").read()
    assert not timed_out, log[-3000:]
    if code == 3:  # TensorFlow's register timeout
        assert "WORKER FAILED: DeadlineExceededError" in log, log[-3000:]
        assert "RegisterTask" in log, log[-3000:]
    else:  # the watchdog, while TensorFlow waits to register
        assert code == 1, log[-3000:]
        timeout_line = f"Timeout ({datetime.timedelta(seconds=deadline)})!"
        assert timeout_line in log, log[-3000:]
        assert "_initialize_multi_worker" in log, log[-3000:]


@pytest.mark.slow
def test_leader_without_peer_ends_at_deadline(tmp_path):
    """Task 0 of 2, alone: TensorFlow waits for the peer while holding the
    GIL (no register timeout applies to the leader); the C watchdog ends it
    with every stack printed."""
    ports = _cluster.free_ports(2)
    cluster = [f"127.0.0.1:{p}" for p in ports]
    proc = _cluster.start(
        ["--register-timeout", "3", "--deadline", "25"],
        _cluster.worker_env(cluster, 0), str(tmp_path / "w0.log"),
    )
    (code,), elapsed, timed_out = _cluster.wait_all([proc], 120)
    log = open(tmp_path / "w0.log").read()
    assert not timed_out and code == 1, log[-3000:]
    assert "Timeout (0:00:25)!" in log, log[-3000:]
    assert "MultiWorkerMirroredStrategy" in log or "__init__" in log


@pytest.mark.slow
def test_lost_peer_ends_survivor_with_error(tmp_path):
    """SIGKILL worker 1 after its first step: worker 0 fails promptly."""
    ports = _cluster.free_ports(2)
    cluster = [f"127.0.0.1:{p}" for p in ports]
    args = ["--steps", "2000", "--heartbeat-timeout", "5",
            "--deadline", "240"]
    logs = [str(tmp_path / f"w{i}.log") for i in (0, 1)]
    procs = [
        _cluster.start(args, _cluster.worker_env(cluster, i), logs[i])
        for i in (0, 1)
    ]
    try:
        t0 = time.monotonic()
        while "FIRST STEP DONE" not in open(logs[1]).read():
            assert procs[1].poll() is None, open(logs[1]).read()[-3000:]
            assert time.monotonic() - t0 < 200, "worker 1 never trained"
            time.sleep(0.2)
        procs[1].kill()
        killed_at = time.monotonic()
        (code,), _, timed_out = _cluster.wait_all([procs[0]], 120)
        survivor_s = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    log = open(logs[0]).read()
    assert not timed_out and code == 3, log[-3000:]
    assert "WORKER FAILED" in log and "task:1" in log, log[-3000:]
    assert survivor_s < 60, survivor_s
    print(f"survivor ended {survivor_s:.1f} s after its peer was killed")
