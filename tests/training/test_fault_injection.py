"""Kill a training run (SIGKILL) at several points, resume it each time, and get exactly
what an uninterrupted run gets: the same exported weights and results, the same
metrics log, and no truncated or temporary file in the run folder. Stop one with
SIGTERM (a scheduler's stop): a clear message, a non-zero status, and it resumes."""

from __future__ import annotations

import csv
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults import assert_nothing_truncated, assert_same_outcome, outcome, write_small_data

from sslmed.app.runner import resume_command
from sslmed.artifacts.rundir import RunDir

HERE = Path(__file__).resolve().parent
RNG = random.Random(20261127)  # fixed points in CI; bench/fuzz.py is the place for more draws
#: one run, killed four times in a row: the tiny run trains 3 epochs x 3 batches in step
#: "first" (so the batch is mid-epoch, after at least one epoch checkpoint), then step
#: "second"; each kill is counted from the (resumed) process's start
KILLS = [
    ("batch", RNG.randint(5, 8)),  # mid-epoch, in epoch 1 or 2 of "first"
    ("checkpoint", 1),  # half-way through writing the next epoch checkpoint
    ("export", 1),  # a backbone export written but not yet renamed
    ("evaluation", 1),  # while probing
]


def metrics_log(run_dir: Path, step: str) -> list[dict[str, str]]:
    with open(run_dir / "steps" / step / "logs" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run_in_fresh_process(recipe: Path, runs_dir: Path) -> Path:
    """Run (or resume) the recipe in a child process, as the killed runs are: the pytest
    process carries state from earlier tests (after tests/serving's ran in it, an
    in-process baseline no longer matched the killed child's weights to 1e-5), so both
    sides of an exactness check run fresh."""
    child = subprocess.run(
        [sys.executable, str(HERE.parent / "faults.py"), str(recipe), str(runs_dir), "none", "0"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=HERE.parent,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    (run_dir,) = (Path(runs_dir) / "faulty").iterdir()
    return run_dir


@pytest.mark.slow
def test_killed_four_times_and_resumed_equals_uninterrupted(tmp_path: Path, data_dir: Path) -> None:
    recipe = write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    baseline = run_in_fresh_process(recipe, tmp_path / "baseline")
    runs = tmp_path / "runs"
    for point, when in KILLS:
        child = subprocess.run(
            [sys.executable, str(HERE.parent / "faults.py"), str(recipe), str(runs), point, str(when)],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=HERE.parent,
        )
        assert child.returncode == -signal.SIGKILL, f"not killed at {point} #{when}:\n{child.stderr[-2000:]}"
        (run_dir,) = (runs / "faulty").iterdir()
        assert not (run_dir / "results.json").exists()
    assert run_in_fresh_process(recipe, runs) == run_dir  # resumes the killed run
    assert_nothing_truncated(run_dir)
    assert_same_outcome(outcome(run_dir), outcome(baseline))
    for step in ("first", "second"):
        resumed, whole = metrics_log(run_dir, step), metrics_log(baseline, step)
        # Lightning logs an epoch's summary row just after its checkpoint is written: a
        # kill in between loses that one row (the known gap); every other row is kept
        missing = [row for row in whole if row not in resumed]
        assert [row for row in whole if row in resumed] == resumed
        assert len(missing) <= 1, missing
        for row in missing:  # an epoch's summary row has no per-step values
            assert not any(value for key, value in row.items() if key.endswith("_step")), row


@pytest.mark.slow
def test_sigterm_stops_the_run_with_a_message_and_it_resumes(tmp_path: Path, data_dir: Path) -> None:
    recipe = write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    baseline = run_in_fresh_process(recipe, tmp_path / "baseline")
    # a finished step keeps its checkpoints only when asked ("first": keep_checkpoints: true)
    kept = baseline / "steps" / "first" / "checkpoints"
    newest = kept / "epoch002-step000009.ckpt"
    assert sorted(p.name for p in kept.iterdir()) == ["epoch001-step000006.ckpt", newest.name, "last.ckpt"]
    assert (kept / "last.ckpt").is_symlink() and (kept / "last.ckpt").resolve() == newest.resolve()
    assert not (baseline / "steps" / "second" / "checkpoints").exists()

    runs = tmp_path / "runs"
    child = subprocess.run(  # SIGTERM at batch 5: epoch 1 of "first", after epoch 0's checkpoint
        [sys.executable, str(HERE.parent / "faults.py"), str(recipe), str(runs), "sigterm", "5"],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=HERE.parent,
    )
    (run_dir,) = (runs / "faulty").iterdir()
    assert child.returncode == 128 + signal.SIGTERM, child.stderr[-2000:]
    message = child.stderr.strip().splitlines()[-1]
    assert "step 'first' was stopped by SIGTERM" in message
    assert f"Continue it with: {resume_command(RunDir(run_dir))}" in message  # the run folder's own recipe
    assert "Traceback" not in child.stderr
    assert not (run_dir / "steps" / "first" / "backbone.safetensors").exists()
    assert not (run_dir / "results.json").exists()
    epochs = [p.name for p in (run_dir / "steps" / "first" / "checkpoints").glob("epoch*")]
    assert epochs == ["epoch000-step000003.ckpt"]

    assert run_in_fresh_process(recipe, runs) == run_dir  # resumes the stopped run
    assert_nothing_truncated(run_dir)
    assert_same_outcome(outcome(run_dir), outcome(baseline))


def test_only_lightnings_signal_exits_become_an_interruption() -> None:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from sslmed.core.errors import RunInterrupted
    from sslmed.training.engine import stopped_by_signal

    with pytest.raises(RunInterrupted, match="step 'a' was stopped by SIGTERM") as stopped:
        with stopped_by_signal("step 'a'"):
            raise SIGTERMException
    assert stopped.value.exit_code == 143
    with pytest.raises(RunInterrupted, match="was stopped by Ctrl-C") as stopped:
        with stopped_by_signal("step 'a'"):
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                sys.exit(1)  # what Lightning does after Ctrl-C
    assert stopped.value.exit_code == 130
    with pytest.raises(SystemExit):  # any other exit is not ours to relabel
        with stopped_by_signal("step 'a'"):
            sys.exit(3)
