import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np


_FORMAT = 1


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
    latest is damaged.
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

    def save(self, step: int, state, extra: dict) -> None:
        ocp = self._ocp
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

    def steps(self) -> list[int]:
        self.manager.reload()
        return sorted(self.manager.all_steps(), reverse=True)

    def restore(self, like, log) -> tuple[int, object, dict] | None:
        """The newest intact checkpoint as `(step, state, record)`, or None."""
        ocp = self._ocp
        for step in self.steps():
            try:
                record = self._read_record(step)
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
            except IncompatibleCheckpoint:
                raise
            except Exception as e:  # noqa: BLE001 - any damage means: try an older one
                # Moved aside, not deleted: nothing is lost, and the step can be
                # written again by the resumed run.
                aside = self.directory.parent / "damaged" / str(step)
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


def write_json_line(path: pathlib.Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
