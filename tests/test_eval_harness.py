"""lm-evaluation-harness adapter (eval.py / lit_gpt.eval.harness): requests against direct computation with our model."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval_task"))
from tiny_run import make_run  # noqa: E402

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm-eval)")
from lm_eval.api.instance import Instance  # noqa: E402

from lit_gpt.eval.scoring import generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tests" / "fixtures" / "eval_task"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("harness") / "run", steps=(5,))


@pytest.fixture(scope="module")
def lm(run):
    from lit_gpt.eval.harness import LitScaleLM, register

    assert register() is LitScaleLM
    from lm_eval.api.registry import get_model

    assert get_model("ArchScale") is LitScaleLM and get_model("litscale") is LitScaleLM
    return LitScaleLM(pretrained=str(run), device="cpu", batch_size=3, trust_remote_code=True)


def direct(model, ctx, cont) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits.float(), -1)[0]
    return sum(logp[len(ctx) - 1 + j, cont[j]].item() for j in range(len(cont)))


def test_loglikelihood_requests(lm):
    reqs = [("Question: What do bees make?\nAnswer:", " honey"), ("The sky is", " blue today"), ("", "Hello world")]
    inst = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)]
    got = lm.loglikelihood(inst)
    tok = lm.tok
    for (ctx, cont), (lp, _) in zip(reqs, got):
        if ctx:
            whole, c = tok.encode(ctx + cont), tok.encode(ctx)
            ref = direct(lm.model, c, whole[len(c):])
        else:
            ref = direct(lm.model, [tok.eos_id], tok.encode(cont))
        assert lp == pytest.approx(ref, abs=1e-4)


def test_loglikelihood_rolling_is_sum_over_windows(lm):
    text = "The quick brown fox jumps over the lazy dog. " * 12
    ids = lm.tok.encode(text)
    assert len(ids) > lm.max_length  # several windows
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # every token predicted once; the first from EOS, later windows with the maximum context
    ref = direct(lm.model, [lm.tok.eos_id], ids[:lm.max_length])
    done = lm.max_length
    while done < len(ids):
        end = min(done + lm.max_length, len(ids))
        ctx = ids[max(0, end - 1 - lm.max_length):done]  # max_length inputs ending right before the last target
        ref += direct(lm.model, ctx, ids[done:end])
        done = end
    assert total == pytest.approx(ref, rel=1e-4)


def test_generate_until(lm):
    prompts = ["Question: What color is the sky?\nAnswer:", "Once upon a time", "Question: What color is the sky?\nAnswer:"]
    kw = {"until": ["\n", "."], "max_gen_toks": 7, "do_sample": False}
    out = lm.generate_until([Instance("generate_until", {}, (p, dict(kw)), i) for i, p in enumerate(prompts)])
    assert out[0] == out[2]
    for p, text in zip(prompts, out):
        gen = generate(lm.model, [lm.tok.encode(p)], max_new_tokens=7)[0]
        full = lm.tok.decode(gen)
        expect = full
        for u in ("\n", "."):
            if u in expect:
                expect = expect[:expect.index(u)]
        assert text == expect or (lm.tok.eos_id in gen and full.startswith(text))


def test_eval_py_default_output_path(run, tmp_path):
    sys.path.insert(0, str(REPO))
    from eval import default_output_path

    args = ["--model", "ArchScale", "--model_args", f"pretrained={run},max_length=64", "--tasks", "x"]
    assert default_output_path(args) == str(run / "eval" / "lm_eval")
    ckpt = run / "checkpoints" / "step-00000005"
    assert default_output_path(["--model_args=pretrained=" + str(ckpt)]) == str(run / "eval" / "lm_eval")
    assert default_output_path(args + ["--output_path", "elsewhere"]) is None
    assert default_output_path(["--model_args", f"pretrained={tmp_path / 'nothing'}"]) is None


@pytest.mark.slow
def test_eval_py_end_to_end_on_local_task(run, tmp_path):
    """eval.py -> lm-eval CLI -> our model on a 5-question task; acc must equal the hand computation."""
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hfc"),
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "eval.py", "--model", "ArchScale", "--model_args", f"pretrained={run},dtype=float32",
           "--include_path", str(TASK_DIR), "--tasks", "litscale_toy,litscale_toy_gen", "--device", "cpu",
           "--batch_size", "4", "--log_samples"]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = glob.glob(str(run / "eval" / "lm_eval" / "**" / "results_*.json"), recursive=True)
    assert files, "eval.py did not default --output_path to RUN/eval/lm_eval"
    results = json.loads(Path(files[-1]).read_text())["results"]

    from lit_gpt.inference import load_model

    model, _, tok, _ = load_model(run, "cpu", "float32")
    docs = [json.loads(x) for x in (TASK_DIR / "litscale_toy.jsonl").read_text().splitlines() if x.strip()]
    correct = correct_norm = exact = 0
    for doc in docs:
        ctx = f"Question: {doc['question']}\nAnswer:"
        c = tok.encode(ctx)
        lls = []
        for choice in doc["choices"]:
            whole = tok.encode(ctx + " " + choice)
            lls.append(direct(model, c, whole[len(c):]))
        correct += int(max(range(4), key=lambda i: lls[i]) == doc["label"])
        norm = [ll / len(" " + ch) for ll, ch in zip(lls, doc["choices"])]
        correct_norm += int(max(range(4), key=lambda i: norm[i]) == doc["label"])
        gen = tok.decode(generate(model, [c], max_new_tokens=6, eos_id=tok.eos_id)[0])
        gen = gen.split("\n")[0].replace(tok.decode([tok.eos_id]), "")
        exact += int(gen.strip() == doc["answer"].strip())
    assert results["litscale_toy"]["acc,none"] == pytest.approx(correct / len(docs))
    assert results["litscale_toy"]["acc_norm,none"] == pytest.approx(correct_norm / len(docs))
    assert results["litscale_toy_gen"]["exact_match,none"] == pytest.approx(exact / len(docs))
