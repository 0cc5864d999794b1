"""Checkpoints: written atomically, loaded without running code, and resume falls back
to the newest checkpoint that loads (the fault-injection test kills real runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslmed.core.errors import CheckpointError
from sslmed.training.engine import AtomicCheckpointIO, epoch_seed, find_resume_checkpoint, load_checkpoint


def fake_checkpoint(epoch: int) -> dict:
    return {"epoch": epoch, "global_step": 3 * (epoch + 1), "state_dict": {"w": torch.ones(4) * epoch}, "loops": {}}


def test_a_failed_write_leaves_the_old_checkpoint_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(fake_checkpoint(0), target)
    original = torch.save

    def broken_save(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint(fake_checkpoint(1), target)
    monkeypatch.setattr(torch, "save", original)
    assert load_checkpoint(target)["epoch"] == 0
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for epoch in (0, 1, 2):
        torch.save(fake_checkpoint(epoch), folder / f"epoch{epoch:03d}-step{3 * (epoch + 1):06d}.ckpt")
    newest = folder / "epoch002-step000009.ckpt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated by a kill
    (folder / ".last.ckpt.abc123.tmp").write_bytes(b"partial")
    with caplog.at_level("WARNING", logger="sslmed.training.engine"):
        path, checkpoint = find_resume_checkpoint(tmp_path)
    assert path.name == "epoch001-step000006.ckpt" and checkpoint["epoch"] == 1
    assert not (folder / ".last.ckpt.abc123.tmp").exists()
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "epoch002-step000009.ckpt: not a loadable checkpoint" in messages and "trying an older" in messages


def test_no_loadable_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "last.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*checkpoints can be loaded .*last\.ckpt.*delete"):
        find_resume_checkpoint(tmp_path)
    assert find_resume_checkpoint(tmp_path / "nothing") is None


class RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/sslmed-weights-only-marker")


def test_a_crafted_checkpoint_runs_no_code_even_when_torch_is_told_to(tmp_path: Path) -> None:
    """With TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1, torch.load's default would unpickle anything."""
    MARKER.unlink(missing_ok=True)
    crafted = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {}, "payload": RunsCode()}, crafted)
    code = (
        "import sys\nfrom sslmed.training.engine import load_checkpoint\n"
        "from sslmed.core.errors import CheckpointError\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as exc:\n    print('refused:', exc)\n"
    )
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(crafted)], capture_output=True, text=True, env=env, timeout=300
    )
    assert "refused:" in out.stdout and "not a loadable checkpoint" in out.stdout, out.stdout + out.stderr
    assert not MARKER.exists(), "loading the checkpoint ran code from it"


def test_epoch_seeds_differ_by_epoch_and_seed_only() -> None:
    assert epoch_seed(0, 1) == epoch_seed(0, 1)
    assert len({epoch_seed(seed, epoch) for seed in range(5) for epoch in range(20)}) == 100


def test_partial_files_of_killed_writes_are_removed(tmp_path: Path) -> None:
    from sslmed.core.files import remove_partial_files

    (tmp_path / ".backbone.safetensors.k2j3.tmp").write_bytes(b"half")
    (tmp_path / "backbone.json").write_text("{}")
    removed = remove_partial_files(tmp_path)
    assert [p.name for p in removed] == [".backbone.safetensors.k2j3.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["backbone.json"]
    assert remove_partial_files(tmp_path / "absent") == []
