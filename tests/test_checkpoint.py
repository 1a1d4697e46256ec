"""Crash-safe checkpoint storage: lit_gpt/training/checkpoint.py."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_gpt.training import checkpoint as ck
from lit_gpt.training.checkpoint import (
    CheckpointInfo,
    CorruptCheckpointError,
    ResumeMismatchError,
    UnsafeCheckpointError,
    check_resume_compatible,
    find_resume_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_weights,
    options_hash,
    save_checkpoint,
    verify_checkpoint,
)

OPTS = {"arch": "sambay", "depth": 8, "vocab_size": 32000, "parameterization": "mup++", "n_embd": 1024}


def make_state(step: int, n: int = 1000) -> dict:
    model = torch.nn.Linear(4, 3)
    torch.manual_seed(step)
    with torch.no_grad():
        model.weight.normal_()
    # shaped like torch.optim.AdamW.state_dict() (building a real AdamW costs seconds of imports)
    optimizer = {
        "state": {i: {"step": torch.tensor(float(step)), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
                  for i, p in enumerate(model.parameters())},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False,
                          "foreach": None, "maximize": False, "capturable": False, "differentiable": False,
                          "fused": None, "params": [0, 1]}],
    }
    return {
        "model": model.state_dict(),
        "optimizer": optimizer,
        "big": torch.arange(n, dtype=torch.float32) + step,
        "step": step,
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1][:5])},
        "nested": [1, 2.5, "x", None, (True, b"raw")],
    }


def save(run: Path, step: int, **kw) -> Path:
    meta = {"tokens": step * 4096, "model_options": OPTS, **kw.pop("meta", {})}
    return save_checkpoint(run, step, make_state(step), meta=meta, **kw)


def names(run: Path) -> list[str]:
    return [i.name for i in list_checkpoints(run)]


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------------------------- round trip
def test_round_trip_and_manifest(tmp_path):
    run = tmp_path / "run"
    state = make_state(100)
    path = save_checkpoint(run, 100, state, meta={"tokens": 409600, "model_options": OPTS, "note": Path("x")})
    assert path == run / "checkpoints" / "step-00000100"
    assert sorted(p.name for p in path.iterdir()) == ["manifest.json", "state.pt"]
    assert (run / "checkpoints" / "latest").read_text() == "step-00000100\n"

    loaded, manifest = load_checkpoint(path)
    assert loaded["step"] == 100 and loaded["nested"] == state["nested"]
    assert torch.equal(loaded["big"], state["big"])
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert loaded["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], state["optimizer"]["state"][0]["exp_avg"])

    assert manifest["step"] == 100 and manifest["tokens"] == 409600
    assert manifest["options_hash"] == options_hash(OPTS)
    assert manifest["model_options"] == OPTS
    assert manifest["meta"]["note"] == "x"
    assert manifest["files"]["state.pt"]["size"] == (path / "state.pt").stat().st_size
    assert len(manifest["files"]["state.pt"]["sha256"]) == 64
    assert manifest["created_at"].endswith("+00:00") and "litscale_version" in manifest
    assert verify_checkpoint(path) == (True, "ok")

    infos = list_checkpoints(run)
    assert [(i.name, i.step, i.intact, i.reason, i.tokens) for i in infos] == [
        ("step-00000100", 100, True, "ok", 409600)
    ]
    assert isinstance(infos[0], CheckpointInfo)
    assert find_resume_checkpoint(run, log=pytest.fail) == path
    # load_checkpoint on the run folder picks the newest intact checkpoint
    assert load_checkpoint(run)[1]["step"] == 100


def test_extra_files_and_resave_same_step(tmp_path):
    run = tmp_path / "run"
    p = save_checkpoint(run, 5, {"a": torch.ones(3)}, meta={}, extra_files={"config.json": "{}", "b.bin": b"\x00"})
    assert set(json.loads((p / "manifest.json").read_text())["files"]) == {"state.pt", "config.json", "b.bin"}
    (p / "config.json").write_text("{ }")
    assert verify_checkpoint(p) == (False, "corrupt (config.json has the wrong size: 3 bytes, manifest says 2)")
    p2 = save_checkpoint(run, 5, {"a": torch.zeros(3)}, meta={})
    assert p2 == p and verify_checkpoint(p)[0]
    assert torch.equal(load_checkpoint(p)[0]["a"], torch.zeros(3))
    assert [x.name for x in (run / "checkpoints").iterdir() if x.name.startswith(".")] == []


def test_state_validation(tmp_path):
    import enum

    import numpy as np

    class Color(enum.Enum):
        RED = 1

    with pytest.raises(TypeError, match=r"state\['rng'\]\['np'\] is a numpy.ndarray.*torch.from_numpy"):
        save_checkpoint(tmp_path, 1, {"rng": {"np": np.zeros(3)}}, meta={})
    with pytest.raises(TypeError, match=r"state\['obj'\] is a .*object"):
        save_checkpoint(tmp_path, 1, {"obj": object()}, meta={})
    with pytest.raises(TypeError, match="enum"):
        save_checkpoint(tmp_path, 1, {"c": Color.RED}, meta={})
    with pytest.raises(ValueError, match="keep_last"):
        save_checkpoint(tmp_path, 1, {}, meta={}, keep_last=0)
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path, 1, {}, meta={"x": object()})
    # numpy scalars (a float subclass) and Parameters become plain values that weights_only can load
    p = save_checkpoint(tmp_path, 1, {"loss": np.float64(2.5), "n": np.int64(3), "w": torch.nn.Parameter(torch.ones(2))},
                        meta={"loss": np.float32(1.5)})
    state, manifest = load_checkpoint(p)
    assert type(state["loss"]) is float and state["loss"] == 2.5 and type(state["n"]) is int
    assert type(state["w"]) is torch.Tensor and manifest["meta"]["loss"] == 1.5
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


# ------------------------------------------------------------------------------------ damaged checkpoints
def test_truncated_state_falls_back(tmp_path):
    run = tmp_path / "run"
    save(run, 100)
    p200 = save(run, 200)
    st = p200 / "state.pt"
    size = st.stat().st_size
    with open(st, "r+b") as f:
        f.truncate(size // 2)
    ok, reason = verify_checkpoint(p200)
    assert not ok and reason == f"corrupt (state.pt truncated: {size // 2} bytes, manifest says {size})"
    logs: list[str] = []
    assert find_resume_checkpoint(run, log=logs.append) == run / "checkpoints" / "step-00000100"
    assert logs == [f"checkpoint step-00000200 is corrupt (state.pt truncated: {size // 2} bytes, manifest says {size}); "
                    "resuming from step-00000100"]
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        load_checkpoint(p200)


def test_sha_mismatch_falls_back(tmp_path):
    run = tmp_path / "run"
    save(run, 200)
    p300 = save(run, 300)
    flip_byte(p300 / "state.pt")
    assert verify_checkpoint(p300) == (False, "corrupt (sha256 mismatch in state.pt)")
    assert verify_checkpoint(p300, check_hash=False) == (True, "ok")  # same size: only the hash notices
    logs: list[str] = []
    assert find_resume_checkpoint(run, log=logs.append).name == "step-00000200"
    assert logs == ["checkpoint step-00000300 is corrupt (sha256 mismatch in state.pt); resuming from step-00000200"]
    infos = list_checkpoints(run)
    assert [(i.step, i.intact) for i in infos] == [(200, True), (300, False)]
    assert infos[1].reason == "corrupt (sha256 mismatch in state.pt)"


def test_missing_or_broken_manifest_falls_back(tmp_path):
    run = tmp_path / "run"
    root = run / "checkpoints"
    p100 = save(run, 100)
    # a crash mid-write: a folder with state.pt but no manifest (as if renamed without one)...
    shutil.copytree(p100, root / "step-00000200")
    (root / "step-00000200" / "manifest.json").unlink()
    # ...a manifest cut short...
    shutil.copytree(p100, root / "step-00000300")
    text = (p100 / "manifest.json").read_text().replace('"step": 100', '"step": 300')
    (root / "step-00000300" / "manifest.json").write_text(text[: len(text) // 2])
    # ...a copied folder whose manifest names another step...
    shutil.copytree(p100, root / "step-00000400")
    # ...and an unfinished save in a .tmp folder of a process that is still alive (our parent): ignored, kept
    live_tmp = root / f".tmp-step-00000500.p{os.getppid()}.{ck._host_tag()}.abc"
    live_tmp.mkdir()
    (live_tmp / "state.pt").write_bytes(b"partial")
    logs: list[str] = []
    assert find_resume_checkpoint(run, log=logs.append) == p100
    assert logs == [
        "checkpoint step-00000400 is corrupt (manifest says step 100, folder is step-00000400); "
        "checkpoint step-00000300 is corrupt (manifest.json unreadable: JSONDecodeError); "
        "checkpoint step-00000200 is incomplete (no manifest.json: the save did not finish); "
        "resuming from step-00000100"
    ]
    assert live_tmp.exists()
    assert names(run) == ["step-00000100", "step-00000200", "step-00000300", "step-00000400"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_tmp_cleaned(tmp_path):
    run = tmp_path / "run"
    root = run / "checkpoints"
    p100 = save(run, 100)
    pid, host = dead_pid(), ck._host_tag()
    partial = root / f".tmp-step-00000200.p{pid}.{host}.aa"  # died while writing state.pt
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"PK\x03\x04 partial")
    done = root / f".tmp-step-00000300.p{pid}.{host}.bb"  # died after the manifest, before the rename
    shutil.copytree(p100, done)
    manifest = json.loads((done / "manifest.json").read_text())
    manifest["step"] = 300
    (done / "manifest.json").write_text(json.dumps(manifest))
    other_host = root / f".tmp-step-00000400.p{pid}.00000000.cc"
    other_host.mkdir()
    stray_latest = root / f".tmp-latest-step-00000100.p{pid}.{host}.dd"
    stray_latest.write_text("step-00000100\n")
    assert names(run) == ["step-00000100"]  # .tmp folders are never listed

    # never promoted (other ranks may be scanning at the same time): an unrenamed save does not count
    assert find_resume_checkpoint(run, log=pytest.fail) == p100
    assert not partial.exists() and not done.exists() and not stray_latest.exists()
    assert other_host.exists()  # cannot tell whether another host's save is alive: left alone
    assert names(run) == ["step-00000100"]


def test_resave_failure_keeps_previous_folder(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path, 9, {"v": torch.ones(2)}, meta={})
    real_rename = os.rename

    def failing_rename(src, dst):
        if Path(src).name.startswith(".tmp-step-"):
            raise OSError("disk full (simulated)")
        return real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", failing_rename)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path, 9, {"v": torch.zeros(2)}, meta={})
    monkeypatch.undo()
    assert verify_checkpoint(p) == (True, "ok")
    assert torch.equal(load_checkpoint(p)[0]["v"], torch.ones(2))
    assert sorted(x.name for x in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000009"]


def test_no_checkpoints(tmp_path):
    assert find_resume_checkpoint(tmp_path / "nothing", log=pytest.fail) is None
    assert list_checkpoints(tmp_path / "nothing") == []
    run = tmp_path / "run"
    p = save(run, 1)
    (p / "state.pt").unlink()
    logs: list[str] = []
    assert find_resume_checkpoint(run, log=logs.append) is None
    assert logs == ["checkpoint step-00000001 is corrupt (state.pt is missing); no intact checkpoint left: starting from scratch"]
    assert verify_checkpoint(tmp_path / "nope") == (False, "missing (no such folder)")


# ------------------------------------------------------------------------------------------------ rotation
def test_keep_last_rotation(tmp_path):
    run = tmp_path / "run"
    for step in (100, 200, 300, 400):
        save(run, step, keep_last=2)
    assert names(run) == ["step-00000300", "step-00000400"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000400"
    save(run, 500, keep_last=1)
    assert names(run) == ["step-00000500"]


def test_keep_last_never_deletes_only_intact(tmp_path):
    run = tmp_path / "run"
    save(run, 100)
    p200 = save(run, 200)
    flip_byte(p200 / "state.pt")  # newest is corrupt; step 100 is the only intact one
    p300 = save(run, 300, keep_last=2)
    # kept: 300 (new) and 100 (newest intact before it); corrupt 200 is newer than the cutoff: left for inspection
    assert names(run) == ["step-00000100", "step-00000200", "step-00000300"]
    flip_byte(p300 / "state.pt")
    # the rotation of a later save only counts intact checkpoints
    save(run, 400, keep_last=2)
    assert [(i.step, i.intact) for i in list_checkpoints(run)] == [(100, True), (200, False), (300, False), (400, True)]
    save(run, 500, keep_last=2)
    assert names(run) == ["step-00000400", "step-00000500"]


def test_keep_last_resumed_timeline(tmp_path):
    """Resumed from an older step: folders of a higher step are never deleted, the new one is always kept."""
    run = tmp_path / "run"
    for step in (100, 200, 300):
        save(run, step)
    save(run, 150, keep_last=1)
    assert names(run) == ["step-00000150", "step-00000200", "step-00000300"]


# ------------------------------------------------------------------------------------------- unsafe files
class _MarkerMaker:
    """Unpickling this calls os.mkdir(marker): harmless, but proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    # sanity: the payload really executes under a plain unpickler (it only makes an empty folder)
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_MarkerMaker(probe)))
    assert probe.is_dir()

    evil_pt = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(1)}, "x": _MarkerMaker(marker)}, evil_pt)
    evil_pkl = tmp_path / "evil.pth"
    evil_pkl.write_bytes(pickle.dumps({"w": _MarkerMaker(marker)}))
    evil_p2 = tmp_path / "evil2.bin"
    evil_p2.write_bytes(pickle.dumps({"w": _MarkerMaker(marker)}, protocol=2))
    for f in (evil_pt, evil_pkl, evil_p2):
        with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*: it needs code execution \(pickle\)") as ei:
            load_weights(f)
        assert "re-save it with litscale or convert to safetensors" in str(ei.value).lower()
    assert "mkdir" in str(pytest.raises(UnsafeCheckpointError, load_weights, evil_pt).value)

    # a checkpoint folder whose manifest matches a malicious state.pt (crafted by hand) is refused too
    run = tmp_path / "run"
    p = save(run, 7)
    shutil.copy(evil_pt, p / "state.pt")
    manifest = json.loads((p / "manifest.json").read_text())
    manifest["files"]["state.pt"] = {"size": evil_pt.stat().st_size, "sha256": ck._sha256_file(evil_pt)}
    (p / "manifest.json").write_text(json.dumps(manifest))
    assert verify_checkpoint(p) == (True, "ok")  # integrity is fine; safety is checked at load time
    with pytest.raises(UnsafeCheckpointError, match="needs code execution"):
        load_checkpoint(p)
    assert not marker.exists()


def test_load_weights_formats(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.randn(3, 2), "b.bias": torch.zeros(4)}
    save_file(sd, str(tmp_path / "model.safetensors"))
    torch.save(sd, tmp_path / "w.pt")
    torch.save({"model": sd, "step": 3}, tmp_path / "wrapped.pth")
    for f in ("model.safetensors", "w.pt", "wrapped.pth"):
        got = load_weights(tmp_path / f)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    run = tmp_path / "run"
    p = save_checkpoint(run, 3, {"model": sd, "optimizer": {}}, meta={})
    for src in (p, run):
        got = load_weights(src)
        assert set(got) == set(sd)
    hf = tmp_path / "hf"
    hf.mkdir()
    save_file({"a.weight": sd["a.weight"]}, str(hf / "model-00001-of-00002.safetensors"))
    save_file({"b.bias": sd["b.bias"]}, str(hf / "model-00002-of-00002.safetensors"))
    assert set(load_weights(hf)) == set(sd)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(CorruptCheckpointError):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown weight file type"):
        (tmp_path / "w.npz").write_bytes(b"")
        load_weights(tmp_path / "w.npz")


# ------------------------------------------------------------------------------------ options / resume check
def test_options_hash_is_stable():
    h = options_hash(OPTS)
    assert h == options_hash(dict(reversed(list(OPTS.items()))))
    assert h == options_hash({**OPTS, "depth": 8.0})
    assert options_hash({"a": (1, 2)}) == options_hash({"a": [1, 2]})
    assert h != options_hash({**OPTS, "depth": 16})
    assert len(h) == 64
    # pinned: the hash must not change between versions (resume checks compare it across runs)
    assert options_hash({"arch": "sambay", "depth": 8}) == (
        __import__("hashlib").sha256(b'{"arch":"sambay","depth":8}').hexdigest()
    )


def test_check_resume_compatible(tmp_path):
    p = save(tmp_path, 10)
    manifest = json.loads((p / "manifest.json").read_text())
    check_resume_compatible(manifest, dict(OPTS))  # same options: fine
    with pytest.raises(ResumeMismatchError) as ei:
        check_resume_compatible(manifest, {**OPTS, "depth": 16})
    msg = str(ei.value)
    assert "checkpoint was depth 8, this run asks depth 16" in msg
    assert msg.startswith("cannot resume from step-00000010:")
    assert msg.endswith("use a new --out_dir or the same options")
    assert ei.value.differences == {"depth": (8, 16)}
    with pytest.raises(ResumeMismatchError, match="checkpoint was arch 'sambay', this run asks arch 'transformer'"):
        check_resume_compatible(manifest, {**OPTS, "arch": "transformer", "extra": 1})
    with pytest.raises(ResumeMismatchError, match="checkpoint has no extra, this run asks extra 1"):
        check_resume_compatible(manifest, {**OPTS, "extra": 1})
    # manifests that store only the hash
    only_hash = {"step": 10, "options_hash": options_hash(OPTS)}
    check_resume_compatible(only_hash, OPTS)
    with pytest.raises(ResumeMismatchError, match="options_hash"):
        check_resume_compatible(only_hash, {**OPTS, "depth": 16})


# ------------------------------------------------------------------------------------------- kill -9 torture
N_BIG = 2_000_000  # 8 MB of float32: a save takes long enough for kills to land in its different phases

# A tiny fork server: imports torch once (and never starts a thread pool, so forking is safe), then for each
# run folder read from stdin forks a child that saves checkpoints in a loop until the test SIGKILLs it.
_FORK_SERVER = r"""
import os, sys
import torch
from lit_gpt.training.checkpoint import save_checkpoint
N, OPTS = int(sys.argv[1]), {"arch": "sambay", "depth": 8}
for line in sys.stdin:
    run = line.strip()
    pid = os.fork()
    if pid == 0:
        try:
            big = torch.arange(N, dtype=torch.float32)
            print("started", flush=True)
            for step in range(1, 100000):
                state = {"big": big + step, "step": step, "opt": {"m": torch.full((1000,), float(step))}}
                save_checkpoint(run, step, state, meta={"tokens": step, "model_options": OPTS}, keep_last=2)
        finally:
            os._exit(3)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("reaped", status, flush=True)
"""


def test_kill_9_during_saves_never_leaves_a_bad_intact_checkpoint(tmp_path):
    server = subprocess.Popen(
        [sys.executable, "-c", _FORK_SERVER, str(N_BIG)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    rng = random.Random(1234)
    outcomes = []
    try:
        for trial in range(6):
            run = tmp_path / f"run{trial}"
            if trial % 2:
                save(run, 0)  # half of the trials start with an older intact checkpoint on disk
            server.stdin.write(f"{run}\n")
            server.stdin.flush()
            lines = {server.stdout.readline().strip(), server.stdout.readline().strip()}
            assert "started" in lines, lines
            pid = int((lines - {"started"}).pop())
            time.sleep(rng.uniform(0.0, 0.5))
            os.kill(pid, signal.SIGKILL)
            reaped = server.stdout.readline().split()
            assert reaped[0] == "reaped" and os.WTERMSIG(int(reaped[1])) == signal.SIGKILL, reaped

            root = run / "checkpoints"
            entries = sorted(e.name for e in root.iterdir()) if root.exists() else []
            for name in entries:
                assert name.startswith(("step-", ".tmp-")) or name == "latest", name
            infos = list_checkpoints(run)
            outcomes.append((entries, [(i.step, i.intact) for i in infos]))
            for info in infos:
                if not info.intact:
                    continue
                state, manifest = load_checkpoint(info.path)  # intact must mean loadable and consistent
                assert manifest["step"] == info.step == state["step"]
                if info.step:
                    assert torch.equal(state["big"], torch.arange(N_BIG, dtype=torch.float32) + info.step)
                    assert torch.equal(state["opt"]["m"], torch.full((1000,), float(info.step)))
            found = find_resume_checkpoint(run, log=lambda _: None)
            intact = [i for i in list_checkpoints(run) if i.intact]
            if found is None:
                assert not intact
            else:
                assert verify_checkpoint(found) == (True, "ok") and found == intact[-1].path
            # the dead child's leftovers were cleaned up (or promoted) by find_resume_checkpoint
            assert not (root.exists() and list(root.glob(".tmp-*"))), outcomes[-1]
            # and saving again works
            save(run, 10_000, keep_last=2)
            assert find_resume_checkpoint(run, log=pytest.fail).name == "step-00010000"
    finally:
        server.stdin.close()
        server.wait(30)
    # the kills landed at different points: some runs had saved checkpoints when they died
    assert sum(1 for _, infos in outcomes if any(s > 0 for s, _ in infos)) >= 3, outcomes


def test_dict_subclasses_and_odd_keys(tmp_path):
    from collections import OrderedDict, defaultdict

    import numpy as np

    state = {"d": defaultdict(list, {"a": [1]}), "o": OrderedDict(b=torch.ones(1)), "k": {np.int64(3): "x"}}
    p = save_checkpoint(tmp_path, 2, state, meta={})
    loaded, _ = load_checkpoint(p)
    assert type(loaded["d"]) is dict and loaded["d"] == {"a": [1]}
    assert type(loaded["o"]) is OrderedDict and loaded["k"] == {3: "x"}


def test_load_checkpoint_verify_false_skips_hashing(tmp_path):
    p = save(tmp_path, 4)
    flip_byte(p / "manifest.json", offset=-3)  # make the manifest unparsable
    with pytest.raises(CorruptCheckpointError, match="manifest.json unreadable"):
        load_checkpoint(p, verify=False)
    p2 = save(tmp_path, 5)
    torch.save({"step": 99}, p2 / "state.pt")  # replaced behind the manifest's back
    assert load_checkpoint(p2, verify=False)[0] == {"step": 99}  # no file checks asked: loads what is there
    with pytest.raises(CorruptCheckpointError, match=r"checkpoint step-00000005 is corrupt \(state.pt"):
        load_checkpoint(p2)
