"""Train a few steps on a fixed synthetic global batch stream; each rank takes its slice of every micro step.

Run with 1 process or under torchrun; writes the per-step losses (rank 0) to the JSON path in argv[1].
The same global batches reach the optimizer whatever the process count, so the losses must agree.
"""

import json
import sys

import torch

from lit_gpt.training.loop import Trainer
from lit_gpt.scaling import BaseHyperparameters
from lit_gpt.training.options import RunOptions

VOCAB, T, STEPS = 128, 32, 4


class GlobalBatchSlices:
    def __init__(self, rank: int, world: int, micro: int):
        self.rank, self.world, self.micro = rank, world, micro
        self.position = 0

    def __iter__(self):
        gen = torch.Generator().manual_seed(1234)
        rows = torch.randint(0, VOCAB, (10_000, T + 1), generator=gen)
        while True:
            start = self.position * self.micro * self.world + self.rank * self.micro
            self.position += 1
            yield rows[start:start + self.micro]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def main(out_path: str) -> None:
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = int(os.environ.get("EQ_GLOBAL_ROWS", "4"))  # sequences per micro step, summed over ranks
    if rows % world:
        raise SystemExit(f"EQ_GLOBAL_ROWS={rows} must be a multiple of the {world} processes")
    micro = rows // world
    accum = int(os.environ.get("EQ_MICRO_STEPS", "2"))  # micro steps per optimizer step
    if os.environ.get("EQ_WEIGHT_CAST") == "optimizer":  # every Linear of the tiny model gets a bf16 working copy
        import lit_gpt.kernels.adamw as adamw

        adamw.MIN_TRITON_NUMEL = 1
    opts = RunOptions(train_model="transformer", depth=2, ar=16, train_name="ddp_mup", ctx_len=T, micro_bsz=micro,
                      total_bsz=accum * rows * T, max_steps=STEPS, log_step=1, eval_step=10_000, save_step=10_000,
                      out_dir=os.path.join(os.path.dirname(out_path), f"run_w{world}"), num_workers=0,
                      vocab_size=VOCAB, base_hps=BaseHyperparameters(d0=2, eta0=0.01, b0=256, warmup_tokens0=256),
                      strategy=os.environ.get("EQ_STRATEGY", "ddp") if world > 1 else "auto", compile=False,
                      precision=os.environ.get("EQ_PRECISION"), guard=os.environ.get("EQ_GUARD", "auto"),
                      weight_cast=os.environ.get("EQ_WEIGHT_CAST", "auto"),
                      adamw_kernel="triton" if os.environ.get("EQ_WEIGHT_CAST") == "optimizer" else "auto",
                      fsdp_version=int(os.environ.get("EQ_FSDP_VERSION", RunOptions.fsdp_version)))
    trainer = Trainer(opts)
    trainer.setup(meta={"vocab_size": VOCAB, "eos_id": 0})
    trainer.build()
    trainer.train_loader = GlobalBatchSlices(trainer.fabric.global_rank, world, micro)
    batches = iter(trainer.train_loader)
    losses, norms = [], []
    for step in range(STEPS):
        result = trainer.train_step(batches, trainer.plan.lr_at(step))
        losses.append(trainer.fabric.all_reduce(result.loss, reduce_op="mean").item())
        norm = result.grad_norm
        norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
    if trainer.fabric.global_rank == 0:
        with open(out_path, "w") as f:
            copies = trainer.working_copies
            json.dump({"working_copies": len(copies.modules) if copies else 0, "world": world,
                       "grad_accum": trainer.plan.grad_accum_steps, "losses": losses, "grad_norms": norms,
                       "grad_clip": trainer.plan.grad_clip}, f)


if __name__ == "__main__":
    main(sys.argv[1])
