#!/usr/bin/env python
"""Pretrain a model: one CPU process, one GPU, or ``torchrun`` across GPUs and nodes.

    python pretrain.py --train_model transformer --depth 8 --train_name scaling_mup --max_steps 200
    torchrun --nproc_per_node=8 pretrain.py --train_model sambay --depth 16 --train_name scaling_mup --train_data_dir D
    python pretrain.py --config configs/demo.yaml --dry_run

Every flag is a field of ``lit_gpt.training.options.RunOptions``; ``--config`` reads the same fields from YAML.
"""

from lit_gpt.training.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
