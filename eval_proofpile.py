"""ArchScale's ``eval_proofpile.py`` command line on top of eval_ppl.py (nothing is downloaded).

    python eval_proofpile.py --checkpoint_path CKPT --config NAME --seq_length 32768 --sliding_window 256 \
        --batch_size 1 --data PROOFPILE_TEST_DIR        # or set PROOFPILE_DIR

Same flags as eval_ppl.py (``--seq_length`` = ``--seq_lengths``, ``--sliding_window`` = ``--stride``); results go
to RUN/eval/ppl/proofpile.json (+ .png) unless ``--output_dir``/``--tag`` say otherwise.
"""

from __future__ import annotations

import sys

from eval_ppl import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a == "--tag" or a.startswith("--tag=") for a in argv):
        argv += ["--tag", "proofpile"]
    main(argv, prog="eval_proofpile.py", default_data_env="PROOFPILE_DIR")
