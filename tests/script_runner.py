"""Run a test's Python script in a fresh interpreter and read back its result (not a test module).

Kernel tests run this way because ``TRITON_INTERPRET`` must be set before triton is first imported, which in the
pytest process has already happened. The script gets the repository as ``sys.argv[1]`` (then ``args``), prints
``RESULT <json>`` last, and exits 77 when it cannot run here (triton missing, or an interpreter feature lacking):
the test is then skipped; any other failure fails it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_script(tmp_path: Path, source: str, *args: str, interpret: bool = True, timeout: int = 300) -> dict:
    script = tmp_path / "script.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(REPO), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    if proc.returncode == 77:
        pytest.skip("cannot run here: " + proc.stdout[-500:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])
