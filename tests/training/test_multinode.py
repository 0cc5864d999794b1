"""Past one machine, by simulation: two torchrun launchers with --nnodes 2 (one process
each, as a cluster scheduler starts them) share one image cache and one run folder,
and end with the same weights as the 2-process run on one node."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SSLMED = str(Path(sys.executable).with_name("sslmed"))
COMMON = (
    "--set",
    "defaults.strategy=ddp",
    "--set",
    "defaults.batch_size=8",
    "--set",
    "defaults.cache=on",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")}
    return {**env, "SSLMED_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_nodes_share_one_cache_and_run_folder_and_match_one_node(tiny_recipe, tmp_path):
    recipe = str(tiny_recipe(steps=3))
    cache = tmp_path / "cache"

    # one node, two processes (Lightning starts the second)
    single = tmp_path / "single"
    done = subprocess.run(
        [SSLMED, "run", recipe, "--run-dir", str(single), *COMMON, "--set", "defaults.devices=2"],
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(cache),
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # two "nodes": two launchers, one process each, rendezvous on 127.0.0.1
    multi = tmp_path / "multi"
    port = _free_port()
    launchers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "--no-python",
                SSLMED,
                "run",
                recipe,
                "--run-dir",
                str(multi),
                *COMMON,
                "--set",
                "defaults.num_nodes=2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(cache),
        )
        for node in (0, 1)
    ]
    outputs = [launcher.communicate(timeout=600) for launcher in launchers]
    for launcher, (_out, err) in zip(launchers, outputs, strict=True):
        assert launcher.returncode == 0, err[-3000:]

    # one cache per data and size, built once and read by every process
    assert sorted(p.name.rsplit("-", 3)[0] for p in cache.iterdir() if p.is_dir()) == [
        "covid3",
        "pneumoniamnist_pneumoniamnist.npz",
    ]
    # one run folder: one results table, printed by global rank 0 only
    assert outputs[0][0].count("| model |") == 1 and "| model |" not in outputs[1][0]
    assert (multi / "results.json").is_file() and (multi / "manifest.json").is_file()
    for step in ("corpus", "target"):
        meta = json.loads((multi / "steps" / step / "backbone.json").read_text())
        assert meta["world_size"] == 2 and meta["global_step"] == 3
        one = load_file(single / "steps" / step / "backbone.safetensors")
        two = load_file(multi / "steps" / step / "backbone.safetensors")
        assert one.keys() == two.keys()
        for name in one:
            assert (one[name] - two[name]).abs().max() <= 1e-5, (step, name)
