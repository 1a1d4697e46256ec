"""Command line of pretrain.py: jsonargparse over ``RunOptions`` (flags, ``--config run.yaml``, env-free)."""

from __future__ import annotations

import errno
import sys
from typing import Optional, Sequence

from lit_gpt.training.options import RunOptions

# OSErrors that are about the machine (full disk, quota, read-only or forbidden paths), not a bug: one line too.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix: printed as one line, no traceback (imported late to keep --help fast)."""
    from lit_gpt.config import ConfigError
    from lit_gpt.training.checkpoint import CheckpointError
    from lit_gpt.training.loop import TrainingStopped
    from lit_gpt.training.options import OptionsError

    errors: list[type[BaseException]] = [ConfigError, OptionsError, CheckpointError, TrainingStopped]
    try:
        from lit_gpt.data import DataError

        errors.append(DataError)
    except ImportError:
        pass
    return tuple(errors)


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="pretrain.py", description="litscale pretraining (ArchScale-compatible flags)",
                            exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below")
    parser.add_class_arguments(RunOptions, nested_key=None, as_group=False)
    return parser


def bool_flags() -> set[str]:
    import dataclasses
    import typing

    hints = typing.get_type_hints(RunOptions)
    return {f"--{f.name}" for f in dataclasses.fields(RunOptions) if hints[f.name] in (bool, Optional[bool])}


def expand_bare_bools(argv: list[str]) -> list[str]:
    """Let ``--dry_run`` mean ``--dry_run true`` (jsonargparse wants a value for booleans)."""
    flags, out = bool_flags(), []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in flags and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def parse_options(argv: Optional[Sequence[str]] = None) -> RunOptions:
    parser = build_parser()
    args = expand_bare_bools(list(sys.argv[1:] if argv is None else argv))
    cfg = parser.parse_args(args)
    cfg = parser.instantiate(cfg)
    values = {k: v for k, v in vars(cfg).items() if k != "config" and not k.startswith("__")}
    return RunOptions(**values)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from lit_gpt.training.loop import EXIT_TOO_MANY_SKIPS, TrainingStopped, run

    from jsonargparse import ArgumentError

    errors = user_errors() + (ArgumentError,)
    try:
        opts = parse_options(argv)
        return run(opts)
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_TOO_MANY_SKIPS
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        print(f"error: {err.strerror}{f': {err.filename}' if err.filename else ''} (free disk space or fix the "
              f"permissions, then run again)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
