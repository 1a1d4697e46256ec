"""The five-minute tour on a laptop CPU: prepare the built-in corpus, train a tiny Transformer++ with μP++,
validate, checkpoint, and draw the loss curve.

    python -m lit_gpt.demo [--steps 300] [--out_dir out/demo]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def plot_losses(metrics_csv: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get("train_loss"):
                train.append((int(float(row["tokens"])), float(row["train_loss"])))
            if row.get("val_loss"):
                val.append((int(float(row["tokens"])), float(row["val_loss"])))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train")
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("litscale demo: transformer_d4 (ar 32), μP++")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out_dir", default="out/demo")
    parser.add_argument("--data_dir", default="data/builtin")
    args = parser.parse_args(argv)

    from lit_gpt.data.prepare import prepare
    from lit_gpt.training.cli import main as pretrain

    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    print(f"1/3 preparing the built-in corpus (Python's own documentation) in {args.data_dir}", flush=True)
    prepare(args.data_dir, builtin=True)
    print(f"2/3 training ({args.steps} steps, config {config})", flush=True)
    rc = pretrain(["--config", str(config), "--train_data_dir", args.data_dir, "--out_dir", args.out_dir,
                   "--max_steps", str(args.steps), "--resume", "auto"])
    if rc != 0:
        return rc
    out = Path(args.out_dir)
    png = out / "loss.png"
    plot_losses(out / "metrics.csv", png)
    print("3/3 done")
    print(f"  metrics:     {out / 'metrics.csv'}")
    print(f"  loss curve:  {png}")
    print(f"  checkpoints: {out / 'checkpoints'}")
    print(f"  next: python eval_ppl.py --help, python -m lit_gpt.runs {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
