"""Run under ``torchrun --nproc_per_node=2`` (gloo, CPU): RankVote's verdicts and reduce_across_ranks on two ranks.

Writes ``<out>_<rank>.json``: the verdict of every call and the all-reduced sum. ``dist.barrier`` is made to
fail, since the point of both is to reduce without one (an NCCL barrier blocks the host until the GPU is idle).
"""

import json
import sys

import torch
import torch.distributed as dist

from lit_gpt.training.parallel import RankVote, reduce_across_ranks


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def no_barrier(*args, **kwargs):
        raise AssertionError("a per-step reduction called dist.barrier")

    dist.barrier = no_barrier
    vote = RankVote(torch.device("cpu"), dist.get_world_size(), lag=2)
    verdicts = []
    for step in range(8):
        # rank 1 alone raises the first flag from step 3 on (a signal); rank 0 alone raises the second at step 1
        verdicts.append(vote(rank == 1 and step >= 3, rank == 0 and step == 1))
        if step == 5:
            vote.clear()
    total = reduce_across_ranks(torch.tensor([float(rank + 1)]), "sum")
    with open(f"{out}_{rank}.json", "w") as fh:
        json.dump({"verdicts": verdicts, "sum": total.item()}, fh)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
