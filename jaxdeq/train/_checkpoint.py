import hashlib
import json
import math
import os
import pathlib
import shutil
from typing import Any

import jax
import numpy as np


_FORMAT = 2


def is_finite(tree) -> bool:
    """Whether every floating-point array leaf of `tree` is finite."""
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(jax.device_get(leaf))
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            return False
    return True


def checksum(tree) -> str:
    """sha256 over the bytes, shapes and dtypes of every array leaf."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


class Checkpoints:
    """orbax-checkpoint storage of training state, with a checksum per step.

    Each step directory holds the state pytree (orbax, written atomically: a step
    appears only when complete) and a JSON record with the step, the recipe, the
    jaxdeq version, a description of the state's structure and a checksum of the
    arrays. Restoring verifies all of them and falls back to older steps when the
    latest is damaged. A state with a NaN or an infinity is never written, so it
    never counts towards `keep` and never pushes out the last finite checkpoint.
    """

    def __init__(self, directory, keep: int, identity: dict):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = pathlib.Path(directory).resolve()
        self.identity = identity
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def save(self, step: int, state, extra: dict) -> bool:
        """Write `state` as step `step`; `False` (and nothing written) if it is not
        finite."""
        ocp = self._ocp
        if not is_finite(state):
            return False
        record = {
            "format": _FORMAT,
            "step": step,
            "checksum": checksum(state),
            **self.identity,
            **extra,
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
            force=True,
        )
        self.manager.wait_until_finished()
        return True

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps(), reverse=True)

    def restore(self, like, log, check=None) -> tuple[int, Any, dict] | None:
        """The newest intact checkpoint as `(step, state, record)`, or None.

        `check(record)`, if given, may raise `IncompatibleCheckpoint` before the
        state is read."""
        ocp = self._ocp
        for step in self.steps():
            try:
                record = self._read_record(step)
                if record.get("format") != _FORMAT:
                    raise IncompatibleCheckpoint(
                        f"the checkpoint at step {step} in {self.directory} has "
                        f"format {record.get('format')!r} (this jaxdeq writes "
                        f"{_FORMAT}); resume it with the jaxdeq that wrote it, or "
                        "start a new run in another directory (--run-dir)."
                    )
                if check is not None:
                    check(record)
                self._check_identity(record)
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(like),
                        record=ocp.args.JsonRestore(),
                    ),
                )
                state = restored["state"]
                if checksum(state) != record["checksum"]:
                    raise ValueError("checksum mismatch: the arrays were altered")
                if not is_finite(state):
                    raise ValueError("the state holds NaN or infinite values")
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 - any damage means: try an older one
                # Moved aside, not deleted: nothing is lost, and the step can be
                # written again by the resumed run.
                aside = unused_path(self.directory.parent / "damaged" / str(step))
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(self.directory / str(step)), str(aside))
                self.manager.reload()
                log(
                    f"checkpoint at step {step} is damaged or incomplete "
                    f"({type(e).__name__}: {str(e)[:200]}); moved it to {aside} and "
                    "trying the previous one."
                )
                continue
            return step, state, record
        return None

    def _read_record(self, step):
        ocp = self._ocp
        restored = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
        return dict(restored["record"])

    def _check_identity(self, record):
        for key, value in self.identity.items():
            if record.get(key) != value:
                raise IncompatibleCheckpoint(
                    f"the checkpoints in {self.directory} were written by another "
                    f"{key} ({record.get(key)!r}, this run: {value!r}). Resume with "
                    "the same recipe and options, or start a new run in another "
                    "directory (--run-dir), or drop --resume."
                )

    def close(self):
        self.manager.close()


class IncompatibleCheckpoint(ValueError):
    """A checkpoint from another recipe, model structure or jaxdeq version."""


def unused_path(path: pathlib.Path) -> pathlib.Path:
    """`path`, or `path.1`, `path.2`, ...: the first that does not exist yet, so
    that moving something aside never collides with what was moved there before."""
    path = pathlib.Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def strict_record(record: dict) -> dict:
    """`record` as strict JSON: each non-finite float becomes `null`, and
    `nonfinite` maps its name to `"nan"`, `"inf"` or `"-inf"`."""
    out, flags = {}, {}
    for name, value in record.items():
        if isinstance(value, float) and not math.isfinite(value):
            flags[name] = "nan" if math.isnan(value) else repr(value)
            value = None
        out[name] = value
    if flags:
        out["nonfinite"] = flags
    return out


def from_strict_record(record: dict) -> dict:
    """The inverse of `strict_record`: the flagged `null`s become floats again."""
    record = dict(record)
    for name, text in record.pop("nonfinite", {}).items():
        record[name] = float(text)
    return record


def write_json_line(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(strict_record(record), allow_nan=False) + "\n")
        f.flush()


def truncate_metrics(path: pathlib.Path, step: int) -> int:
    """Drop the lines of `path` whose step is above `step` (they are re-run by a
    resumed run) and append them to `path`'s `.superseded` sibling instead of
    deleting them. Returns how many lines moved."""
    path = pathlib.Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            over = json.loads(line).get("step", 0) > step
        except ValueError:  # a line cut short by a kill: not a record
            over = True
        (dropped if over else kept).append(line)
    if dropped:
        superseded = path.with_name(path.stem + ".superseded.jsonl")
        with open(superseded, "a") as f:
            f.write("".join(line + "\n" for line in dropped))
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return len(dropped)
