"""SIGKILL a training run at seeded random points; the restart resumes.

`tests/reliability/_resume_run.py` trains the example-style model (every
training component: RaggedEmbeddingBag, FactorizedDense, keras_research
Adam, JacobianRegularizer) with `keras.callbacks.BackupAndRestore` and
deterministic ops. Each trial kills it with SIGKILL after a seeded random
global step (plus a random delay of up to 50 ms, so kills also land
inside a step or a backup write), restarts the same command, and
requires the final weights and optimizer state to be bit-identical to an
uninterrupted run.

(This uses a script of the test suite rather than
`examples/text_classification.py`, which downloads and tokenizes a real
data set: too slow to kill and restart repeatedly here.)
"""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.reliability import _cluster

EPOCHS = 6
STEPS_PER_EPOCH = 10
TRIALS = 5


def _command(backup, out):
    return [sys.executable, "-m", "tests.reliability._resume_run",
            "--backup", str(backup), "--out", str(out),
            "--epochs", str(EPOCHS),
            "--steps-per-epoch", str(STEPS_PER_EPOCH)]


def _run_to_end(cmd, log_path, timeout=300):
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, cwd=_cluster.ROOT,
                              env=_cluster.single_env(), stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode


def _kill_after_step(cmd, log_path, step, delay, timeout=300):
    """Starts `cmd`, SIGKILLs it `delay` s after it prints `STEP step`."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(cmd, cwd=_cluster.ROOT,
                                env=_cluster.single_env(), stdout=log,
                                stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    try:
        while f"STEP {step}\n" not in open(log_path).read():
            if proc.poll() is not None:
                raise AssertionError(
                    f"run ended before step {step}:\n"
                    + open(log_path).read()[-3000:])
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"step {step} never reached")
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.slow
def test_sigkill_at_random_points_resumes_identically(tmp_path):
    reference_out = tmp_path / "reference.npz"
    code = _run_to_end(_command(tmp_path / "ref_backup", reference_out),
                       tmp_path / "reference.log")
    assert code == 0, open(tmp_path / "reference.log").read()[-3000:]
    reference = _load(reference_out)

    rng = np.random.default_rng(2020)
    total = EPOCHS * STEPS_PER_EPOCH
    identical = 0
    report = []
    for trial in range(TRIALS):
        step = int(rng.integers(STEPS_PER_EPOCH, total))  # after a backup
        delay = float(rng.uniform(0, 0.05))
        backup = tmp_path / f"backup{trial}"
        out = tmp_path / f"trial{trial}.npz"
        log = tmp_path / f"trial{trial}.log"
        cmd = _command(backup, out)
        _kill_after_step(cmd, log, step, delay)
        assert not out.exists()
        killed_log = open(log).read()
        code = _run_to_end(cmd, log)
        text = open(log).read()
        assert code == 0, text[-3000:]
        resumed = text[len(killed_log):]
        assert "RESUMING AT EPOCH" in resumed, resumed[-2000:]
        epoch = int(resumed.split("RESUMING AT EPOCH ")[1].split()[0])
        assert 1 <= epoch <= step // STEPS_PER_EPOCH
        # The restart ran only the remaining epochs.
        assert f"STEP {epoch * STEPS_PER_EPOCH}\n" not in resumed
        assert f"STEP {epoch * STEPS_PER_EPOCH + 1}\n" in resumed
        got = _load(out)
        assert got.keys() == reference.keys()
        same = all(np.array_equal(got[k], reference[k]) for k in reference)
        identical += same
        report.append((step, round(delay, 3), epoch, same))
    print(f"resumed identically {identical}/{TRIALS}: "
          f"(kill after step, delay s, resumed at epoch, identical) "
          f"{report}")
    assert identical == TRIALS, report
