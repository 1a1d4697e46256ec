"""ArchScale-compatible entry point for data preparation.

    python scripts/prepare_data.py --input_dir RAW --output_dir TOK --tokenizer PATH --context_length 8192 \\
        [--max_length 65536 --shuffle]

Everything is forwarded to ``python -m lit_gpt.data.prepare`` (see ``--help`` there for all options).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lit_gpt.data.prepare import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python scripts/prepare_data.py"))
