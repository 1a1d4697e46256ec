"""Print the dtype of the residual stream entering every Block for one bf16-mixed training step.

    python tests/helpers/residual_dtype.py STRATEGY [FSDP_VERSION]     (one process; FSDP2 runs on CPU with gloo)
"""

import sys
import tempfile

import torch

from lit_gpt.model import Block
from lit_gpt.scaling import BaseHyperparameters
from lit_gpt.training.loop import Trainer
from lit_gpt.training.options import RunOptions


def main(strategy: str, fsdp_version: int) -> None:
    opts = RunOptions(train_model="sambay", depth=4, ar=16, train_name="dtype_mup", ctx_len=32, micro_bsz=2,
                      total_bsz=64, max_steps=2, out_dir=tempfile.mkdtemp(), num_workers=0, vocab_size=128,
                      compile=False, base_hps=BaseHyperparameters(d0=4, b0=64), strategy=strategy,
                      fsdp_version=fsdp_version, precision="bf16-mixed")
    trainer = Trainer(opts)
    trainer.setup(meta={"vocab_size": 128, "eos_id": 0})
    trainer.build()
    seen = []
    for module in trainer.model.modules():
        if isinstance(module, Block):
            module.register_forward_pre_hook(lambda _m, args: seen.append(str(args[0].dtype)))
    gen = torch.Generator().manual_seed(0)
    batches = iter([torch.randint(0, 128, (2, 33), generator=gen) for _ in range(2)])
    trainer.train_step(batches, 1e-3)
    print("residual dtypes:", " ".join(seen))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1)
