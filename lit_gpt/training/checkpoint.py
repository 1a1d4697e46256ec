"""Crash-safe checkpoint storage for a run folder.

Layout (see docs/design.md, "Run folder")::

    OUT/checkpoints/step-00000300/state.pt        torch.save of plain data (tensors, numbers, str, dict, list)
    OUT/checkpoints/step-00000300/manifest.json   written last: step, tokens, options_hash, files (size, sha256)
    OUT/checkpoints/latest                        text file naming the newest saved folder (informational only)

How a save stays crash safe: everything is written into a hidden sibling folder
(``.tmp-step-00000300.p<pid>.<host>``), each file is fsync'ed, ``manifest.json`` is written last, the folder
is fsync'ed and then renamed into place in one atomic ``rename``.  A ``step-*`` folder therefore either has a
manifest that describes every file in it, or it is not a checkpoint.  Readers never trust a folder because of
its name or the ``latest`` pointer: :func:`verify_checkpoint` re-checks sizes and sha256 sums, and
:func:`find_resume_checkpoint` walks back from the newest folder to the newest *intact* one, saying why it
skipped each newer one.

Loading never runs pickled code: :func:`load_checkpoint` and :func:`load_weights` use
``torch.load(weights_only=True)`` (or safetensors) and turn a file that would need code execution into
:class:`UnsafeCheckpointError`.

Distributed runs: call :func:`save_checkpoint` on global rank 0 only, with full (gathered, unsharded)
state dicts of plain tensors, and put a barrier after it.  To resume, let rank 0 call
:func:`find_resume_checkpoint` (it hashes the files once and may tidy ``.tmp-*`` leftovers), broadcast the
path, and have every rank call ``load_checkpoint(path, verify=False)`` (rank 0 may keep ``verify=True``: it
is served from its cache).  Then :func:`check_resume_compatible` before loading the weights into the model.

Typical use by the training loop::

    path = find_resume_checkpoint(out_dir, log=fabric.print)         # None: start from scratch
    if path is not None:
        state, manifest = load_checkpoint(path)
        check_resume_compatible(manifest, model_options)
        ...
    save_checkpoint(out_dir, step, {"model": ..., "optimizer": ..., "step": step, ...},
                    meta={"tokens": tokens, "model_options": model_options}, keep_last=3)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import hashlib
import json
import math
import os
import re
import shutil
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINTS_DIR",
    "MANIFEST_NAME",
    "STATE_NAME",
    "LATEST_NAME",
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "ResumeMismatchError",
    "CheckpointInfo",
    "checkpoint_name",
    "checkpoints_root",
    "validate_state",
    "save_checkpoint",
    "list_checkpoints",
    "verify_checkpoint",
    "find_resume_checkpoint",
    "read_manifest",
    "load_checkpoint",
    "load_weights",
    "options_hash",
    "check_resume_compatible",
    "clean_stale_tmp",
]

CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "state.pt"
MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest"
FORMAT_VERSION = 1
TMP_PREFIX = ".tmp-"

_STEP_RE = re.compile(r"^step-(\d{8,})$")
# .tmp-<what>-step-XXXXXXXX.p<pid>.<hosttag>[.<rand>]
_TMP_RE = re.compile(r"^\.tmp-.*\.p(?P<pid>\d+)\.(?P<host>[0-9a-f]{8})(?:\.[0-9a-f]+)?$")
_HASH_CHUNK = 8 * 1024 * 1024


# ----------------------------------------------------------------------------------------------------- errors
class CheckpointError(RuntimeError):
    """Base class of every checkpoint problem this module reports."""


class CorruptCheckpointError(CheckpointError):
    """The folder is not an intact checkpoint (missing/incomplete manifest, truncated or altered file)."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need arbitrary code execution (a full pickle) to load; litscale refuses."""


class ResumeMismatchError(CheckpointError):
    """The checkpoint was written by a run with different model-defining options."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]] | None = None):
        super().__init__(message)
        #: key -> (value in the checkpoint, value asked by this run); missing values are ``_MISSING``.
        self.differences = differences or {}


# ------------------------------------------------------------------------------------------------------ info
@dataclass(frozen=True)
class CheckpointInfo:
    """One ``step-*`` folder of a run, as :func:`list_checkpoints` sees it."""

    path: Path
    step: int
    intact: bool
    reason: str  # "ok" when intact, else e.g. "corrupt (sha256 mismatch in state.pt)"
    manifest: dict | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def tokens(self) -> int | None:
        return None if self.manifest is None else self.manifest.get("tokens")


def checkpoint_name(step: int) -> str:
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"step-{step:08d}"


def checkpoints_root(run_dir: str | os.PathLike) -> Path:
    """``run_dir/checkpoints``; a path that already is a ``checkpoints`` folder is returned as is."""
    run_dir = Path(run_dir)
    if run_dir.name == CHECKPOINTS_DIR and not (run_dir / CHECKPOINTS_DIR).is_dir():
        return run_dir
    return run_dir / CHECKPOINTS_DIR


# ------------------------------------------------------------------------------------------ small fs helpers
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_bytes_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_name(what: str) -> str:
    return f"{TMP_PREFIX}{what}.p{os.getpid()}.{_host_tag()}.{os.urandom(3).hex()}"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return True
    return True


_IN_PROGRESS: set[str] = set()  # tmp folders this process is writing right now
_IN_PROGRESS_LOCK = threading.Lock()


def clean_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Remove ``.tmp-*`` folders left by saves/deletions that crashed, when that is safe.

    Safe means: the folder was made on this host (host tag in its name) by a process that no longer exists,
    and not by an in-flight save of this process.  Anything else (other hosts on a shared file system,
    names we did not write) is left alone; readers ignore ``.tmp-*`` folders anyway.  Returns what was removed.

    A save that died after writing its manifest but before the rename is removed too, never promoted: every
    rank of a multi-node job may call :func:`find_resume_checkpoint` at the same time, and a promotion by one
    node while another is scanning would make them resume from different steps.  Removing ``.tmp-*``
    folders cannot change any reader's answer, since they are never candidates.
    """
    root = checkpoints_root(run_dir)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    me, host = os.getpid(), _host_tag()
    for entry in sorted(root.iterdir()):
        m = _TMP_RE.match(entry.name)
        if not m or m.group("host") != host:
            continue
        pid = int(m.group("pid"))
        with _IN_PROGRESS_LOCK:
            busy = os.path.realpath(entry) in _IN_PROGRESS
        if busy or (pid != me and _pid_alive(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        if not entry.exists():
            removed.append(entry)
    return removed


# ------------------------------------------------------------------------------------------- state checking
_PRIMITIVES = (bool, int, float, str, bytes, type(None), complex)
_SAFE_LEAVES = (torch.dtype, torch.device, torch.Size)


def validate_state(state: Any, _where: str = "state") -> Any:
    """Return ``state`` rebuilt from plain types that ``torch.load(weights_only=True)`` can read back.

    Allowed: tensors (``nn.Parameter`` is detached), bool/int/float/str/bytes/None/complex, torch.dtype,
    torch.device, torch.Size, and dict/OrderedDict/list/tuple of those (dict keys: str/int/float/bool/None).
    Subclasses of int/float/str (numpy scalars, IntEnum...) are converted to the plain type.  Anything else
    (numpy arrays, DTensor, arbitrary objects) raises ``TypeError`` naming where it is, so a bad state fails
    at the first save rather than at resume time.  Call it once early to fail fast.
    """
    t = type(state)
    if t is torch.Tensor:
        return state
    if t is torch.nn.Parameter:
        return state.detach()
    if isinstance(state, torch.Tensor):
        raise TypeError(
            f"{_where} is a {t.__module__}.{t.__qualname__} (a tensor subclass): save plain tensors, "
            "e.g. a full (gathered) state dict, not a sharded one"
        )
    if t in _PRIMITIVES or isinstance(state, _SAFE_LEAVES):
        return state
    if isinstance(state, enum.Enum) and not isinstance(state, (int, float, str)):
        raise TypeError(f"{_where} is an enum member {state!r}: save its .value instead")
    if isinstance(state, bool):  # pragma: no cover - bool cannot be subclassed
        return bool(state)
    if isinstance(state, int):
        return int(state)
    if isinstance(state, float):
        return float(state)
    if isinstance(state, str):
        return str(state)
    if type(state).__module__ == "numpy" and hasattr(state, "item") and getattr(state, "ndim", 1) == 0:
        return validate_state(state.item(), _where)  # numpy scalars that do not subclass int/float
    if isinstance(state, Mapping):  # dict subclasses (defaultdict...) are saved as plain dicts
        out: dict = OrderedDict() if isinstance(state, OrderedDict) else {}
        for k, v in state.items():
            out[_plain_key(k, _where)] = validate_state(v, f"{_where}[{k!r}]")
        return out
    if t in (list, tuple):
        items = [validate_state(v, f"{_where}[{i}]") for i, v in enumerate(state)]
        return items if t is list else tuple(items)
    hint = ""
    if type(state).__module__ == "numpy":
        hint = ": convert numpy arrays with torch.from_numpy(...) or .tolist()"
    raise TypeError(
        f"{_where} is a {t.__module__}.{t.__qualname__}; checkpoints hold only tensors, numbers, strings and "
        f"dict/list/tuple of them (loading must not need pickled code){hint}"
    )


def _plain_key(k: Any, where: str) -> Any:
    if type(k) in (str, int, float, bool, type(None)):
        return k
    if not isinstance(k, enum.Enum):
        for base in (bool, int, float, str):
            if isinstance(k, base):
                return base(k)
        if type(k).__module__ == "numpy" and hasattr(k, "item") and getattr(k, "ndim", 1) == 0:
            return _plain_key(k.item(), where)
    raise TypeError(f"{where} has a key {k!r} of type {type(k).__qualname__}; use str or int keys")


def _json_ready(obj: Any, where: str = "meta") -> Any:
    """Meta must be JSON; Paths and enums become strings, tuples lists, NaN is refused."""
    if isinstance(obj, enum.Enum):
        return _json_ready(obj.value, where)
    if obj is None or type(obj) in (bool, str):
        return obj
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _json_ready(obj.item(), where)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _json_ready(obj.item(), where)
    raise TypeError(f"{where} is a {type(obj).__qualname__}; checkpoint meta must be JSON data")


# -------------------------------------------------------------------------------------------- options hash
def _canonical(obj: Any) -> Any:
    """Value used for hashing/comparing options: tuples -> lists, integral floats -> int, Paths -> str."""
    if isinstance(obj, enum.Enum):
        return _canonical(obj.value)
    if obj is None or type(obj) in (bool, str):
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj) or math.isinf(obj):
            return repr(float(obj))
        return int(obj) if obj.is_integer() else float(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        import dataclasses

        return _canonical(dataclasses.asdict(obj))
    if type(obj).__module__ == "numpy" and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return _canonical(obj.item())
    raise TypeError(f"cannot hash option value {obj!r} of type {type(obj).__qualname__}")


def options_hash(options: Mapping[str, Any]) -> str:
    """Stable sha256 (hex) of the canonical JSON of the model-defining options (key order does not matter)."""
    text = json.dumps(_canonical(dict(options)), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Missing:
    def __repr__(self) -> str:
        return "<unset>"


_MISSING = _Missing()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_compatible(manifest: Mapping[str, Any], current_model_options: Mapping[str, Any]) -> None:
    """Raise :class:`ResumeMismatchError` if ``manifest`` was saved with other model-defining options.

    Compares key by key when the manifest stores the options (``save_checkpoint(meta={"model_options":
    ...})``); otherwise compares only ``options_hash``.  A manifest with neither passes (nothing to check).
    """
    name = checkpoint_name(int(manifest.get("step", 0))) if isinstance(manifest.get("step"), int) else "checkpoint"
    saved = manifest.get("model_options")
    if saved is None:
        saved = (manifest.get("meta") or {}).get("model_options")
    current = _canonical(dict(current_model_options))
    if saved is None:
        saved_hash = manifest.get("options_hash")
        if saved_hash and saved_hash != options_hash(current_model_options):
            raise ResumeMismatchError(
                f"cannot resume from {name}: it was saved with other model options (options_hash "
                f"{saved_hash[:12]}…, this run {options_hash(current_model_options)[:12]}…): use a new --out_dir "
                "or the same options"
            )
        return
    a, b = _flatten(_canonical(saved)), _flatten(current)
    diffs: dict[str, tuple[Any, Any]] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va != vb:
            diffs[key] = (va, vb)
    if not diffs:
        return

    def fmt(v: Any) -> str:
        return repr(v) if isinstance(v, str) else json.dumps(v) if not isinstance(v, _Missing) else "unset"

    parts = []
    for key, (va, vb) in diffs.items():
        if va is _MISSING:
            parts.append(f"checkpoint has no {key}, this run asks {key} {fmt(vb)}")
        elif vb is _MISSING:
            parts.append(f"checkpoint was {key} {fmt(va)}, this run does not set {key}")
        else:
            parts.append(f"checkpoint was {key} {fmt(va)}, this run asks {key} {fmt(vb)}")
    raise ResumeMismatchError(
        f"cannot resume from {name}: " + "; ".join(parts) + ": use a new --out_dir or the same options", diffs
    )


# -------------------------------------------------------------------------------------------------- saving
def _litscale_version() -> str:
    try:
        from importlib.metadata import version

        return version("litscale")
    except Exception:  # pragma: no cover - running from a source tree without metadata
        return "0+unknown"


def _write_latest(root: Path, name: str) -> None:
    """Best effort (the pointer is informational; readers never trust it): errors are ignored."""
    tmp = root / _tmp_name(f"latest-{name}")
    try:
        _write_bytes_durable(tmp, (name + "\n").encode())
        os.replace(tmp, root / LATEST_NAME)
        _fsync_dir(root)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _remove_checkpoint_dir(path: Path) -> None:
    """Rename out of the ``step-*`` namespace first (atomic), then delete: a crash never leaves half a step."""
    trash = path.parent / _tmp_name(f"del-{path.name}")
    key = os.path.realpath(trash)
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add(key)
    try:
        os.rename(path, trash)
        _fsync_dir(path.parent)
        shutil.rmtree(trash, ignore_errors=True)
    finally:
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard(key)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    state: Mapping[str, Any],
    *,
    meta: Mapping[str, Any],
    keep_last: int | None = None,
    extra_files: Mapping[str, bytes | str] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-{step:08d}/`` crash-safely and return its path.

    ``state`` is saved with ``torch.save`` into ``state.pt`` (see :func:`validate_state` for what it may
    hold).  ``meta`` is JSON data stored in the manifest; these keys are also lifted to the manifest's top
    level: ``tokens`` (tokens seen), ``model_options`` (the model-defining options, used by
    :func:`check_resume_compatible`) and ``options_hash`` (computed from ``model_options`` when not given).
    ``extra_files`` (name -> bytes or text) are written next to ``state.pt`` and covered by the manifest.

    ``keep_last=N`` then keeps the N newest intact checkpoints with step <= ``step`` (this one included) and
    deletes every ``step-*`` folder older than the oldest of them (intact or not: they are superseded).
    Folders with a higher step (another timeline, e.g. after resuming from an older checkpoint) and
    not-intact folders newer than the N-th kept one (evidence of what went wrong) are never touched, and
    nothing is deleted while fewer than N intact checkpoints exist, so the newest intact checkpoint and the
    only intact one always survive.  Deletion renames a folder out of the ``step-*`` namespace before
    removing it, so a crash mid-delete never leaves half a checkpoint under a step name.

    A re-save of an existing step replaces that folder: the old one is renamed away, the new one renamed into
    place, then the old one deleted (a crash between the two renames, a window of microseconds, loses that
    step and resuming falls back to the previous checkpoint).

    Raises ``TypeError`` for state or meta that cannot be stored safely (nothing is written then) and
    ``OSError`` for file-system failures (the temporary folder is removed; existing checkpoints untouched).
    """
    name = checkpoint_name(step)
    if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
        raise ValueError(f"keep_last must be an int >= 1 or None, got {keep_last!r}")
    if not isinstance(meta, Mapping):
        raise TypeError("meta must be a dict of JSON data")
    clean_state = validate_state(state)
    if not isinstance(clean_state, Mapping):
        raise TypeError("state must be a dict")
    meta_json = _json_ready(meta)
    extra = dict(extra_files or {})
    for fname in extra:
        if fname in (STATE_NAME, MANIFEST_NAME) or "/" in fname or "\\" in fname or fname.startswith("."):
            raise ValueError(f"invalid extra file name {fname!r}")

    model_options = meta_json.get("model_options")
    ohash = meta_json.get("options_hash")
    if ohash is None and isinstance(model_options, Mapping):
        ohash = options_hash(model_options)

    root = checkpoints_root(run_dir)
    if not root.is_dir():
        root.mkdir(parents=True, exist_ok=True)
        _fsync_dir(root.parent)
    clean_stale_tmp(root)
    tmp = root / _tmp_name(name)
    tmp_key = os.path.realpath(tmp)
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add(tmp_key)
    try:
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}
        state_path = tmp / STATE_NAME
        with open(state_path, "wb") as f:
            torch.save(clean_state, f)
            f.flush()
            os.fsync(f.fileno())
        for fname, data in extra.items():
            _write_bytes_durable(tmp / fname, data.encode("utf-8") if isinstance(data, str) else bytes(data))
        for fname in [STATE_NAME, *extra]:
            p = tmp / fname
            files[fname] = {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        manifest = {
            "format": FORMAT_VERSION,
            "step": step,
            "tokens": meta_json.get("tokens"),
            "options_hash": ohash,
            "model_options": model_options,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "litscale_version": _litscale_version(),
            "torch_version": torch.__version__,
            "files": files,
            "meta": meta_json,
        }
        _write_bytes_durable(tmp / MANIFEST_NAME, (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode())
        _fsync_dir(tmp)

        final = root / name
        old = None  # a folder of the same step being replaced: moved aside, deleted once the new one is in
        if final.exists():
            old = root / _tmp_name(f"del-{name}")
            old_key = os.path.realpath(old)
            with _IN_PROGRESS_LOCK:
                _IN_PROGRESS.add(old_key)
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if old is not None:
                with contextlib.suppress(OSError):
                    os.rename(old, final)  # put the previous folder back
            raise
        finally:
            if old is not None:
                with _IN_PROGRESS_LOCK:
                    _IN_PROGRESS.discard(old_key)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard(tmp_key)

    _remember_verified(final, manifest)
    _write_latest(root, name)
    if keep_last is not None:
        _rotate(root, step, keep_last)
    return final


def _rotate(root: Path, step: int, keep_last: int) -> None:
    """Keep the ``keep_last`` newest intact checkpoints with step <= ``step``; delete every folder older than
    the oldest of them.  Walks newest-first and hashes only what it keeps (cached for folders this process
    wrote or verified), so older folders are deleted without being read."""
    candidates = sorted(
        ((int(m.group(1)), e) for e in root.iterdir() if (m := _STEP_RE.match(e.name)) and e.is_dir()),
        key=lambda x: x[0],
        reverse=True,
    )
    candidates = [(s, e) for s, e in candidates if s <= step]
    intact = 0
    cutoff = None  # step of the keep_last-th newest intact checkpoint
    for s, entry in candidates:
        ok, _, _ = _check(entry, check_hash=True, use_cache=True)
        if ok:
            intact += 1
            if intact == keep_last:
                cutoff = s
                break
    if cutoff is None:
        return  # fewer intact checkpoints than keep_last: delete nothing
    for s, entry in candidates:
        if s < cutoff:
            _remove_checkpoint_dir(entry)


# ------------------------------------------------------------------------------------------------ verifying
_VERIFIED: dict[str, tuple[tuple, dict]] = {}  # realpath -> (stat signature, manifest) of intact folders
_VERIFIED_LOCK = threading.Lock()


def _signature(path: Path, manifest: Mapping[str, Any]) -> tuple:
    sig = []
    for fname in [MANIFEST_NAME, *sorted(manifest.get("files", {}))]:
        st = os.stat(path / fname)
        sig.append((fname, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(sig)


def _remember_verified(path: Path, manifest: dict) -> None:
    with contextlib.suppress(OSError):
        with _VERIFIED_LOCK:
            _VERIFIED[os.path.realpath(path)] = (_signature(path, manifest), manifest)


def read_manifest(path: str | os.PathLike) -> dict:
    """Parse ``manifest.json`` of a checkpoint folder (no file checks); raises CorruptCheckpointError."""
    ok, reason, manifest = _check(Path(path), check_hash=False, use_cache=False, files=False)
    if manifest is None:
        raise CorruptCheckpointError(f"checkpoint {Path(path).name} is {reason}")
    return manifest


def _check(
    path: Path, *, check_hash: bool, use_cache: bool, files: bool = True, expect_step: int | None = None
) -> tuple[bool, str, dict | None]:
    if not path.is_dir():
        return False, "missing (no such folder)", None
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        return False, f"incomplete (no {MANIFEST_NAME}: the save did not finish)", None
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return False, f"corrupt ({MANIFEST_NAME} unreadable: {e.__class__.__name__})", None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        return False, f"corrupt ({MANIFEST_NAME} lists no files)", None
    if manifest.get("format") != FORMAT_VERSION:
        return False, f"unsupported (manifest format {manifest.get('format')!r}, expected {FORMAT_VERSION})", None
    m = _STEP_RE.match(path.name)
    if m:
        expect_step = int(m.group(1))
    if expect_step is not None and manifest.get("step") != expect_step:
        return False, f"corrupt (manifest says step {manifest.get('step')!r}, folder is {path.name})", manifest
    if not files:
        return True, "ok", manifest
    key = os.path.realpath(path)
    if use_cache and check_hash:
        with _VERIFIED_LOCK:
            cached = _VERIFIED.get(key)
        if cached is not None:
            with contextlib.suppress(OSError):
                if cached[1] == manifest and cached[0] == _signature(path, manifest):
                    return True, "ok", manifest
    for fname, entry in manifest["files"].items():
        fpath = path / fname
        if not isinstance(entry, dict) or not isinstance(entry.get("size"), int) or "sha256" not in entry:
            return False, f"corrupt ({MANIFEST_NAME} entry for {fname} is malformed)", manifest
        if "/" in fname or fname.startswith(".") or not fpath.is_file():
            return False, f"corrupt ({fname} is missing)", manifest
        size = fpath.stat().st_size
        if size != entry["size"]:
            what = "truncated" if size < entry["size"] else "has the wrong size"
            return False, f"corrupt ({fname} {what}: {size} bytes, manifest says {entry['size']})", manifest
    if check_hash:
        for fname, entry in manifest["files"].items():
            if _sha256_file(path / fname) != entry["sha256"]:
                return False, f"corrupt (sha256 mismatch in {fname})", manifest
        _remember_verified(path, manifest)
    return True, "ok", manifest


def verify_checkpoint(path: str | os.PathLike, *, check_hash: bool = True) -> tuple[bool, str]:
    """``(True, "ok")`` if ``path`` is an intact checkpoint folder, else ``(False, reason)``.

    Intact: ``manifest.json`` parses, names this folder's step, and every file it lists exists with the
    recorded size and (unless ``check_hash=False``) sha256.  Always re-reads the files (no caching).
    Reasons read well after "checkpoint step-… is ", e.g. ``"corrupt (sha256 mismatch in state.pt)"``.
    """
    ok, reason, _ = _check(Path(path), check_hash=check_hash, use_cache=False)
    return ok, reason


def _scan(root: Path, *, check_hash: bool, use_cache: bool) -> list[CheckpointInfo]:
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        m = _STEP_RE.match(entry.name)
        if not m or not entry.is_dir():
            continue
        ok, reason, manifest = _check(entry, check_hash=check_hash, use_cache=use_cache)
        out.append(CheckpointInfo(entry, int(m.group(1)), ok, reason, manifest))
    out.sort(key=lambda i: i.step)
    return out


def list_checkpoints(run_dir: str | os.PathLike, *, check_hash: bool = True) -> list[CheckpointInfo]:
    """Every ``step-*`` folder under ``run_dir/checkpoints``, sorted by step, each with ``intact``/``reason``.

    ``.tmp-*`` folders (unfinished saves) are not listed.  With ``check_hash=False`` only manifests and
    sizes are checked (fast; a same-size bit flip goes unnoticed).
    """
    return _scan(checkpoints_root(run_dir), check_hash=check_hash, use_cache=False)


def find_resume_checkpoint(run_dir: str | os.PathLike, log: Callable[[str], Any] | None = print) -> Path | None:
    """Path of the newest intact checkpoint of ``run_dir``, or None if there is none.

    Newer folders that are not intact are skipped, and ``log`` gets one line saying so, e.g.
    ``checkpoint step-00000300 is corrupt (sha256 mismatch in state.pt); resuming from step-00000200``.
    Nothing is logged when the newest checkpoint is intact.  Stale ``.tmp-*`` folders of dead processes on
    this host are removed.  Checks newest-first and stops at the first intact one, hashing only what it needs.
    """
    root = checkpoints_root(run_dir)
    if not root.is_dir():
        return None
    clean_stale_tmp(root)
    candidates = []
    for entry in root.iterdir():
        m = _STEP_RE.match(entry.name)
        if m and entry.is_dir():
            candidates.append((int(m.group(1)), entry))
    candidates.sort(reverse=True)
    skipped: list[str] = []
    found: Path | None = None
    for _, entry in candidates:
        ok, reason, _ = _check(entry, check_hash=True, use_cache=False)
        if ok:
            found = entry
            break
        skipped.append(f"checkpoint {entry.name} is {reason}")
    if skipped and log is not None:
        tail = f"resuming from {found.name}" if found is not None else "no intact checkpoint left: starting from scratch"
        log("; ".join([*skipped, tail]))
    return found


# ------------------------------------------------------------------------------------------------- loading
_DETAIL_RE = re.compile(r"((?:Trying to load unsupported|Unsupported)[^\n]*?)(?:\. Please|\.?\s*$)", re.M)


def _unsafe_error(path: Path, err: BaseException) -> UnsafeCheckpointError:
    m = _DETAIL_RE.search(str(err))
    detail = f" [{m.group(1).strip()}]" if m else ""
    return UnsafeCheckpointError(
        f"refusing to load {path}: it needs code execution (pickle){detail}; it is not a plain tensor file that "
        "torch.load(weights_only=True) accepts. Re-save it with litscale or convert to safetensors "
        "(only if you trust where it came from)"
    )


def _torch_load_safe(path: Path, map_location: Any) -> Any:
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: our error says it
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _unsafe_error(path, e) from None
    except (RuntimeError, EOFError) as e:
        raise CorruptCheckpointError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else e!r}") from e


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", *, verify: bool = True
) -> tuple[dict, dict]:
    """Load ``(state, manifest)`` from a checkpoint folder (or a run folder: its newest intact checkpoint).

    With ``verify`` (default) the folder is checked first (sizes and sha256; a folder this process already
    verified or wrote and whose files did not change is not re-hashed) and :class:`CorruptCheckpointError`
    is raised if it is not intact.  ``state.pt`` is read with ``torch.load(weights_only=True)`` only; a file
    that needs pickled code raises :class:`UnsafeCheckpointError`.
    """
    path = Path(path)
    if not (path / MANIFEST_NAME).exists() and checkpoints_root(path).is_dir():
        found = find_resume_checkpoint(path, log=None)
        if found is None:
            raise CorruptCheckpointError(f"no intact checkpoint under {checkpoints_root(path)}")
        path = found
    if verify:
        ok, reason, manifest = _check(path, check_hash=True, use_cache=True)
        if not ok:
            raise CorruptCheckpointError(f"checkpoint {path.name} is {reason} ({path})")
    else:
        manifest = read_manifest(path)
    assert manifest is not None
    state = _torch_load_safe(path / STATE_NAME, map_location)
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"{path / STATE_NAME} does not hold a dict (got {type(state).__name__})")
    return state, manifest


def _unwrap_model_state(obj: Any) -> Any:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def load_weights(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Load a model state dict from a plain weight file or folder, never running pickled code.

    * ``*.safetensors`` -> ``safetensors.torch.load_file``;
    * ``*.pt`` / ``*.pth`` / ``*.bin`` / ``*.ckpt`` -> ``torch.load(weights_only=True)``;
    * a litscale checkpoint folder (has ``manifest.json``) or a run folder -> verified :func:`load_checkpoint`;
    * another folder -> all ``*.safetensors`` in it (merged, e.g. sharded HF exports), else the single
      ``*.pt``/``*.pth``/``*.bin`` in it.

    A top-level ``{"model": {...}}`` or ``{"state_dict": {...}}`` wrapper is unwrapped.
    """
    path = Path(path)
    if path.is_dir():
        if (path / MANIFEST_NAME).exists() or checkpoints_root(path).is_dir():
            state, _ = load_checkpoint(path, map_location)
            return _unwrap_model_state(state)
        shards = sorted(path.glob("*.safetensors"))
        if shards:
            out: dict[str, torch.Tensor] = {}
            for shard in shards:
                out.update(load_weights(shard, map_location))
            return out
        pts = sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in path.glob(ext))
        if len(pts) == 1:
            return load_weights(pts[0], map_location)
        raise FileNotFoundError(
            f"{path}: no litscale checkpoint (manifest.json), no *.safetensors and not exactly one *.pt/*.pth/*.bin"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such weight file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        device = str(map_location) if map_location is not None else "cpu"
        try:
            return load_file(str(path), device=device)
        except Exception as e:  # safetensors raises its own SafetensorError
            raise CorruptCheckpointError(f"cannot read {path}: {e}") from e
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return _unwrap_model_state(_torch_load_safe(path, map_location))
    raise ValueError(f"{path}: unknown weight file type {suffix!r} (expected .safetensors, .pt, .pth, .bin, .ckpt)")
