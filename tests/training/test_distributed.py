"""Two processes on CPU (gloo) end with identical weights.

The ranks are forked from the test process (torch is already imported, so they start in
milliseconds) and find their rank, the world size and the rendezvous in the same environment
variables ``torchrun`` sets.
"""

from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

from ctfa_cli.training.loop import train
from tests.training.helpers import tiny_config

STEPS = 3
WORLD_SIZE = 2


def run_rank(rank: int, port: int, data_dir, run_dir, out_dir) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank),
                       "WORLD_SIZE": str(WORLD_SIZE), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)  # one core per rank
    result = train(data_dir, run_dir, tiny_config(), max_iters=STEPS, device="cpu")
    assert result.rank == rank
    torch.save(result.model.state_dict(), out_dir / f"rank{rank}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_end_with_identical_weights(datadir, tmp_path):
    out = tmp_path / "weights"
    out.mkdir()
    mp.start_processes(run_rank, args=(free_port(), datadir, tmp_path / "run", out),
                       nprocs=WORLD_SIZE, start_method="fork")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key
    # Rank 0 alone wrote the run, and its checkpoint holds the final weights.
    saved = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert saved["extra"]["step"] == STEPS
    for key, value in ranks[0].items():
        assert torch.equal(value, saved["state_dict"][key]), key
