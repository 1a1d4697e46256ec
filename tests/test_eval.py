"""Eval room: the shared loader, scoring/generation, Phonebook, perplexity, averaging, summary (CPU, fast)."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval_task"))
from tiny_run import make_run, random_model, tiny_config, write_tokenizer  # noqa: E402

from lit_gpt.eval.scoring import (extrapolation_problem, generate, score_continuations, sliding_window_nll,  # noqa: E402
                                  sliding_window_pairs)
from lit_gpt.inference import ModelLoadError, load_model  # noqa: E402
from lit_gpt.training.checkpoint import UnsafeCheckpointError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("evalrun") / "run", steps=(10, 20))


@pytest.fixture(scope="module")
def loaded(run):
    return load_model(run, "cpu", "float32")


def direct_logprob(model, ctx: list[int], cont: list[int]) -> float:
    full = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).logits.float(), -1)[0]
    return sum(logp[len(ctx) - 1 + j, cont[j]].item() for j in range(len(cont)))


# ----------------------------------------------------------------------------------------------------- loader
def test_load_run_and_checkpoint_folders(run, loaded):
    model, cfg, tok, info = loaded
    assert info.kind == "run" and info.step == 20 and info.run_dir == str(run)
    assert cfg.parameterization == "mup++" and cfg.name == "transformer_d2"
    assert info.tokenizer_path == str(run / "tokenizer.json")
    assert not model.training
    m2, cfg2, _, info2 = load_model(run / "checkpoints" / "step-00000010", "cpu")
    assert info2.kind == "checkpoint" and info2.step == 10 and info2.run_dir == str(run)
    assert cfg2 == cfg
    # config name that agrees is accepted; a field override applies
    _, cfg3, _, info3 = load_model(run, "cpu", config_override="transformer_d2")
    assert cfg3 == cfg and "agrees" in info3.notes[0]
    _, cfg4, _, _ = load_model(run, "cpu", config_override={"block_size": 512})
    assert cfg4.block_size == 512


def test_load_skips_broken_newest_checkpoint(tmp_path):
    run = make_run(tmp_path / "r", steps=(1, 2))
    state = run / "checkpoints" / "step-00000002" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    _, _, _, info = load_model(run, "cpu")
    assert info.step == 1


def test_loader_errors(run, tmp_path):
    bad = tmp_path / "weights.txt"
    bad.write_text("hello")
    with pytest.raises(ModelLoadError, match="unknown checkpoint format"):
        load_model(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a litscale run folder"):
        load_model(empty)
    with pytest.raises(ModelLoadError, match="no such checkpoint"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match="disagrees with the checkpoint"):
        load_model(run, config_override="sambay_d8")
    # a run folder whose checkpoints are all broken
    broken = make_run(tmp_path / "broken", steps=(1,))
    (broken / "checkpoints" / "step-00000001" / "manifest.json").unlink()
    with pytest.raises(ModelLoadError, match="no intact checkpoint"):
        load_model(broken)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickle_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": Evil()}, path)
    (tmp_path / "config.json").write_text(json.dumps({"litscale": {"config": tiny_config().to_dict()}}))
    with pytest.raises(UnsafeCheckpointError, match="refusing"):
        load_model(path, config_override=tmp_path / "config.json")


def test_vocab_mismatch(run, tmp_path):
    big = write_tokenizer(tmp_path / "big" / "tokenizer.json", vocab_size=512)
    with pytest.raises(ModelLoadError, match="vocabulary mismatch"):
        load_model(run, tokenizer=big)
    # weights whose embedding does not match the config
    model = random_model(tiny_config(vocab_size=512))
    from safetensors.torch import save_file

    wdir = tmp_path / "w"
    wdir.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wdir / "model.safetensors"))
    (wdir / "config.json").write_text(json.dumps({"litscale": {"config": tiny_config().to_dict()}}))
    write_tokenizer(wdir / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="vocabulary mismatch"):
        load_model(wdir / "model.safetensors")


def test_bare_weights_with_model_name(tmp_path):
    cfg = tiny_config()
    model = random_model(cfg)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    write_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(ModelLoadError, match="carries no config"):
        load_model(path)
    m, c, _, info = load_model(path, config_override={"name": "transformer_d2", "parameterization": "mup++",
                                                       "block_size": 128, "eos_id": 0})
    assert (c.n_embd, c.vocab_size, c.parameterization) == (64, 384, "mup++")
    ids = torch.randint(0, 384, (1, 9))
    torch.testing.assert_close(m(ids).logits, model(ids).logits)


# ----------------------------------------------------------------------------------------------------- scoring
def test_loglikelihood_equals_direct(loaded):
    model, cfg, tok, _ = loaded
    reqs = [(tok.encode("The cat sat on"), tok.encode(" the mat")),
            (tok.encode("Hello"), tok.encode(" world, and many more words follow")),
            (tok.encode("a b c d e f g h i j"), tok.encode(" k")),
            ([tok.eos_id], tok.encode("Start of a document"))]
    batched = score_continuations(model, reqs, max_length=128, batch_size=4)
    single = score_continuations(model, reqs, max_length=128, batch_size=1)
    for (ctx, cont), (lp_b, g_b), (lp_s, g_s) in zip(reqs, batched, single):
        ref = direct_logprob(model, ctx, cont)
        assert lp_b == pytest.approx(ref, abs=1e-4) and lp_s == pytest.approx(ref, abs=1e-4)
        assert g_b == g_s
    # greedy flag: the model's own argmax continuation is greedy
    ctx = tok.encode("Once upon a time")
    cont = generate(model, [ctx], max_new_tokens=3)[0]
    assert score_continuations(model, [(ctx, cont)], max_length=128)[0][1] is True
    # left truncation keeps the last max_length inputs
    long_ctx = list(range(5, 45))
    (lp,) = score_continuations(model, [(long_ctx, [7, 8])], max_length=16)
    assert lp[0] == pytest.approx(direct_logprob(model, long_ctx[-15:], [7, 8]), abs=1e-4)


def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("name", ["transformer_d2", "sambay_d4", "samba_d2"])
def test_generate_with_decode_state_equals_naive(name):
    cfg = tiny_config(name, vocab_size=256)
    model = random_model(cfg, seed=3, head_std=2.0)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 256, (n,), generator=g).tolist() for n in (7, 7, 18)]
    out = generate(model, prompts, max_new_tokens=5, batch_size=2)  # the two 7-token prompts share a batch
    for p, o in zip(prompts, out):
        assert o == naive_greedy(model, p, 5)
    # stop callback and eos
    out = generate(model, prompts[:1], max_new_tokens=8, stop=lambda i, gen: len(gen) == 3)
    assert out[0] == naive_greedy(model, prompts[0], 3)
    assert generate(model, prompts[:1], max_new_tokens=8, eos_id=out[0][0])[0] == out[0][:1]


def test_sampling_is_seeded(loaded):
    model, _, tok, _ = loaded
    p = [tok.encode("Some prompt")]
    a = generate(model, p, max_new_tokens=6, temperature=1.0, seed=1)
    b = generate(model, p, max_new_tokens=6, temperature=1.0, seed=1)
    assert a == b


def test_sliding_windows_cover_each_token_once():
    tokens = list(range(100, 137))
    for window, stride in [(8, 8), (8, 3), (8, 1), (40, 5), (36, 36)]:
        pairs = sliding_window_pairs(tokens, window=window, stride=stride)
        scored = [t for _, cont in pairs for t in cont]
        assert scored == tokens[1:]
        for ctx, cont in pairs:
            assert len(ctx) + len(cont) - 1 <= window
        if stride < window:  # every later window keeps window - stride tokens of context
            assert all(len(ctx) >= window - stride for ctx, _ in pairs[1:])


def test_sliding_window_nll_single_window_is_plain_loss(loaded):
    model, _, tok, _ = loaded
    ids = tok.encode("The quick brown fox jumps over the lazy dog. " * 4)[:60]
    nll, n = sliding_window_nll(model, ids, window=128, stride=128)
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(torch.tensor([ids[:-1]])).logits[0].float(),
                                                 torch.tensor(ids[1:]), reduction="sum").item()
    assert n == len(ids) - 1 and nll == pytest.approx(loss, rel=1e-5)


def test_extrapolation_rule():
    t = tiny_config()  # RoPE, full attention, trained at 128
    assert extrapolation_problem(t, 128) is None
    assert "exceeds the training length" in extrapolation_problem(t, 256)
    assert extrapolation_problem(t.replace(rope_base=640000), 256) is None  # rbase
    assert extrapolation_problem(tiny_config("sambay_d4"), 10_000) is None  # NoPE
    assert extrapolation_problem(tiny_config("samba_d2"), 10_000) is None  # RoPE only in SWA 16 <= 128


# ----------------------------------------------------------------------------------------------------- phonebook
LINE = re.compile(r"^([A-Z][a-z]+ [A-Z][a-z]+): ([6-9]\d{9})$")


def test_phonebook_prompt_structure_and_lengths(loaded):
    from lit_gpt.eval.phonebook import bucket_edges, make_samples, score_answer

    _, _, tok, _ = loaded
    kw = dict(min_len=150, max_len=600, num_samples=9, num_buckets=3, batch_size=2, seed=7)
    samples = make_samples(tok, **kw)
    edges = bucket_edges(150, 600, 3)
    assert len(samples) == 9 and [sum(s.bucket == b for s in samples) for b in range(3)] == [3, 3, 3]
    for s in samples:
        lo, hi = edges[s.bucket], edges[s.bucket + 1]
        assert lo <= len(s.prompt_ids) <= hi and len(s.prompt_ids) == s.target_len
        assert s.prompt_ids[:s.n_fill] == [tok.eos_id] * s.n_fill
        assert s.prompt_ids[s.n_fill:] == tok.encode(s.text)
        book, rest = s.text.split("\n\n")
        lines = book.split("\n")
        entries = [LINE.match(x).groups() for x in lines]
        assert len(entries) == s.n_entries >= 3
        assert len({n for n, _ in entries}) == len(entries) and len({d for _, d in entries}) == len(entries)
        shot1, shot2, query = rest.split("\n")
        assert LINE.match(shot1).groups() in entries and LINE.match(shot2).groups() in entries
        assert query == f"{s.name}:" and (s.name, s.answer) in entries and shot1 != f"{s.name}: {s.answer}"
        assert entries[s.query_position] == (s.name, s.answer)
    # batches share one length
    assert len(samples[0].prompt_ids) == len(samples[1].prompt_ids)
    # deterministic by seed
    again = make_samples(tok, **kw)
    assert [s.prompt_ids for s in again] == [s.prompt_ids for s in samples]
    other = make_samples(tok, **{**kw, "seed": 8})
    assert [s.prompt_ids for s in other] != [s.prompt_ids for s in samples]
    assert score_answer(" 6123456789\n", "6123456789") and score_answer("6123456789", "6123456789")
    assert not score_answer(" 61234567891", "6123456789") and not score_answer(" 612345678", "6123456789")
    assert not score_answer("x 6123456789", "6123456789")


def test_phonebook_cli(run, tmp_path):
    import eval_phonebook

    result = eval_phonebook.main(["--checkpoint_path", str(run), "--min_eval_len", "150", "--max_eval_len", "200",
                                  "--num_samples", "4", "--num_buckets", "2", "--eval_batch_size", "2",
                                  "--output_dir", str(tmp_path / "pb"), "--allow_extrapolation"])
    data = json.loads((tmp_path / "pb" / "phonebook.json").read_text())
    assert (tmp_path / "pb" / "phonebook.png").stat().st_size > 0
    assert data["num_samples"] == 4 and len(data["buckets"]) == 2 and 0.0 <= data["accuracy"] <= 1.0
    assert data["step"] == 20 and data["model"] == "transformer_d2"
    assert all(150 <= s["prompt_len"] <= 200 for s in result["samples"])
    with pytest.raises(SystemExit):  # 300 + answer > 128 tokens on a RoPE model trained at 128
        eval_phonebook.main(["--checkpoint_path", str(run), "--min_eval_len", "100", "--max_eval_len", "300",
                             "--num_samples", "2", "--output_dir", str(tmp_path / "pb2")])


# ----------------------------------------------------------------------------------------------------- ppl
def test_eval_ppl_cli_and_default_output(run, tmp_path, loaded):
    import eval_ppl

    model, _, tok, _ = loaded
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"d{i}.txt").write_text(f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 30)
    (texts / "short.txt").write_text("tiny")
    res = eval_ppl.main(["--checkpoint_path", str(run), "--data", str(texts), "--seq_lengths", "32,64",
                         "--stride", "16", "--batch_size", "3"])
    out = run / "eval" / "ppl"
    assert (out / "ppl.json").is_file() and (out / "ppl.png").is_file()
    rows = {r["seq_length"]: r for r in res["lengths"]}
    assert rows[32]["docs"] == 3 and rows[32]["skipped_docs"] == 1 and rows[32]["tokens"] == 3 * 32
    # the single-window value at 64 equals the plain loss of the first 65 tokens
    docs = [tok.encode((texts / f"d{i}.txt").read_text())[:65] for i in range(3)]
    ref = sum(sliding_window_nll(model, d, window=64, stride=64)[0] for d in docs) / (3 * 64)
    assert rows[64]["loss"] == pytest.approx(ref, rel=1e-5) and rows[64]["ppl"] == pytest.approx(math.exp(ref))
    with pytest.raises(SystemExit):
        eval_ppl.main(["--checkpoint_path", str(run), "--data", str(texts), "--seq_lengths", "256"])


def test_eval_proofpile_flags(run, tmp_path, monkeypatch):
    import runpy

    texts = tmp_path / "pp"
    texts.mkdir()
    (texts / "a.jsonl").write_text(json.dumps({"text": "lemma foo: forall x, x = x. proof. " * 40}) + "\n")
    monkeypatch.setattr(sys, "argv", ["eval_proofpile.py", "--checkpoint_path", str(run), "--config",
                                      "transformer_d2", "--seq_length", "64", "--sliding_window", "16",
                                      "--batch_size", "1", "--data", str(texts), "--output_dir", str(tmp_path / "o")])
    runpy.run_path(str(REPO / "eval_proofpile.py"), run_name="__main__")
    data = json.loads((tmp_path / "o" / "proofpile.json").read_text())
    assert data["lengths"][0]["stride"] == 16 and data["lengths"][0]["docs"] == 1


# ----------------------------------------------------------------------------------------------------- average
def test_average_of_two_checkpoints(run, tmp_path):
    from lit_gpt.average import AverageError, average_checkpoints, main
    from lit_gpt.training.checkpoint import load_checkpoint, read_manifest

    a, _ = load_checkpoint(run / "checkpoints" / "step-00000010")
    b, _ = load_checkpoint(run / "checkpoints" / "step-00000020")
    main(["--last", "2", str(run), "--out", str(tmp_path / "avg")])
    model, cfg, tok, info = load_model(tmp_path / "avg", "cpu")
    assert info.step == 20 and info.tokenizer_path
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, (a["model"][k] + b["model"][k]) / 2)
    man = read_manifest(Path(info.checkpoint))
    assert len(man["meta"]["averaged_from"]) == 2 and man["meta"]["config"] == cfg.to_dict()
    other = make_run(tmp_path / "other", tiny_config(n_query_groups=2))
    with pytest.raises(AverageError, match="different model config"):
        average_checkpoints([run / "checkpoints" / "step-00000010", other], tmp_path / "avg2")


# ----------------------------------------------------------------------------------------------------- summary
def test_summary_collects_everything(tmp_path):
    from lit_gpt.eval.summary import main

    r1 = tmp_path / "runA"
    (r1 / "eval" / "lm_eval" / "m").mkdir(parents=True)
    (r1 / "eval" / "lm_eval" / "m" / "results_2026.json").write_text(json.dumps(
        {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.01}}}))
    (r1 / "eval" / "phonebook").mkdir()
    (r1 / "eval" / "phonebook" / "phonebook.json").write_text(json.dumps(
        {"kind": "phonebook", "accuracy": 0.25, "step": 5, "buckets": [{"lo": 1, "hi": 2, "accuracy": 0.25}]}))
    (r1 / "eval" / "ppl").mkdir()
    (r1 / "eval" / "ppl" / "ppl.json").write_text(json.dumps(
        {"kind": "ppl", "lengths": [{"seq_length": 64, "ppl": 12.0}, {"seq_length": 1024, "ppl": 10.0}]}))
    r2 = tmp_path / "runB"
    (r2 / "eval").mkdir(parents=True)
    (r2 / "eval" / "phonebook.json").write_text(json.dumps({"kind": "phonebook", "accuracy": 0.75, "buckets": []}))
    rows = main([str(r1), str(r2), "--out", str(tmp_path / "s.png"), "--csv", str(tmp_path / "s.csv")])
    got = {(r.run, r.key): r.value for r in rows}
    assert got == {("runA", "arc_easy/acc"): 0.5, ("runA", "phonebook/acc"): 0.25, ("runA", "phonebook/acc@1-2"): 0.25,
                   ("runA", "ppl/ppl@64"): 12.0, ("runA", "ppl/ppl@1024"): 10.0, ("runB", "phonebook/acc"): 0.75}
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "s.csv").read_text().count("\n") == 7
