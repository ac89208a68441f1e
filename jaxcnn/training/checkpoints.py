"""Checkpoints: the one module that knows the Orbax API.

A checkpoint is a step folder under ``<workdir>/checkpoints`` with two items:

- ``state``: the training state's arrays, ``{"step", "params", "model_state",
  "opt_state"}``, written with Orbax's ``StandardSave`` and restored against an
  abstract state (shapes and dtypes only), so a checkpoint of another model or other
  shapes is refused rather than half-loaded;
- ``position``: JSON saying where the run stands in its data order (see
  :class:`jaxcnn.training.timetable.Position`), so that training continues with exactly
  the next batch, and a SHA-256 of the state's arrays, checked on restore, so that a
  corrupted file is refused rather than silently loaded.

Saves are synchronous; Orbax writes each one to a temporary folder and renames it when
complete, so a process killed mid-save leaves the earlier checkpoints as they were.
jaxcnn then lists the step folder's files with their sizes and SHA-256
(``jaxcnn-files.json``), and checks them before restoring.
Retention keeps the newest ``keep`` checkpoints plus the one with the best test accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxcnn.errors import CheckpointError, WriteError, describe_os_error
from jaxcnn.lazy import lazy_import
from jaxcnn.quiet import absl_errors_only, write_failure_echoes_silenced
from jaxcnn.training.parallel import global_array, host_value
from jaxcnn.training.state import TrainState
from jaxcnn.training.timetable import Position
from jaxcnn.trees import named_leaves

# Orbax is imported when a manager is first opened (0.2 s that a run's start does without).
ocp = lazy_import("orbax.checkpoint")

#: The folder of a work dir that holds the checkpoints.
CHECKPOINT_DIR = "checkpoints"
#: jaxcnn's list of a step folder's files, with their sizes and SHA-256.
FILE_LIST = "jaxcnn-files.json"


def tree_sha256(tree: Any) -> str:
    """Return a SHA-256 of a pytree's arrays: each leaf's path, then its bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(host_value(leaf)).tobytes())
    return digest.hexdigest()


def _state_tree(state: TrainState) -> dict[str, Any]:
    """Return the arrays of ``state`` as the dict that is saved."""
    return {
        "step": state.step,
        "params": state.params,
        "model_state": state.model_state,
        "opt_state": state.opt_state,
    }


class Checkpoints:
    """The checkpoints of one work dir: save, list and restore.

    Args:
        workdir: the run's work dir; checkpoints live in ``workdir/checkpoints``.
        keep: how many of the newest checkpoints to keep (the best one is kept besides).
        read_only: open for restoring only: create, save and delete nothing.
    """

    def __init__(self, workdir: str | Path, keep: int = 3, read_only: bool = False) -> None:
        self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
        self.keep, self.read_only = keep, read_only

    @functools.cached_property
    def _manager(self) -> ocp.CheckpointManager:
        """Orbax's manager of the folder, opened at its first use: a run's first save."""
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=self.keep),
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=lambda metrics: metrics["test_accuracy"],
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        )
        with absl_errors_only():  # Orbax warns that a read-only manager will not save
            options = ocp.CheckpointManagerOptions(
                preservation_policy=None if self.read_only else policy,
                enable_async_checkpointing=False,
                read_only=self.read_only,
                create=not self.read_only,
                cleanup_tmp_directories=not self.read_only,  # left by a process killed mid-save
            )
            return ocp.CheckpointManager(
                self.directory,
                options=options,
                item_handlers={
                    "state": ocp.StandardCheckpointHandler(),
                    "position": ocp.JsonCheckpointHandler(),
                },
            )

    def steps(self) -> list[int]:
        """Return the steps of the complete checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Return the newest complete checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def save(self, state: TrainState, position: Position, test_accuracy: float | None) -> None:
        """Write a checkpoint of ``state`` at ``position``, then apply the retention rule.

        A checkpoint saved without a test accuracy (a converted one, say) competes for
        the newest ``keep`` places only, not for the best.

        Raises:
            WriteError: the checkpoint could not be written whole. Orbax writes it in a
                temporary folder, so the earlier checkpoints are as they were and the
                partial one is never read; the next writable open deletes it.
        """
        tree = _state_tree(state)
        record = {**dataclasses.asdict(position), "state_sha256": tree_sha256(tree)}
        step = int(host_value(state.step))
        try:
            with write_failure_echoes_silenced():  # we report a failure in one line
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(tree),
                        position=ocp.args.JsonSave(record),
                    ),
                    metrics=None
                    if test_accuracy is None
                    else {"test_accuracy": float(test_accuracy)},
                    force=True,
                )
                if jax.process_index() == 0:
                    _write_file_list(self.directory / str(step))
        except Exception as error:  # Orbax and tensorstore wrap the OS error in their own
            raise WriteError(self.directory / str(step), describe_os_error(error)) from error

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, Position]:
        """Return the state and position saved at ``step``, shaped and typed like ``like``.

        ``like`` may hold arrays or only their shapes (``jax.ShapeDtypeStruct`` with a
        sharding, :func:`jaxcnn.training.state.state_shapes`). The arrays come back with
        its shardings, so a checkpoint written by any number of devices or processes
        restores onto any other layout. ``nonfinite_step`` comes back 0: a checkpoint is
        written only after a check that every step before it was finite.

        Raises:
            CheckpointError: no complete checkpoint at ``step``, or it cannot be read as
                a state of ``like``'s structure, shapes and dtypes.
        """
        available = self.steps()
        if step not in available:
            listing = ", ".join(map(str, available)) or "none"
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.directory} (available: {listing})"
            )
        abstract = jax.tree.map(_abstract_leaf, _state_tree(like))
        try:
            _verify_files(self.directory / str(step))
            with absl_errors_only():  # Orbax warns of a damaged step before it raises
                tree, position = self._restore_checked(step, abstract)
        except Exception as error:  # Orbax and tensorstore raise many kinds.
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} cannot be restored: {_one_line(error)}"
            ) from error
        state = like.replace(
            step=tree["step"],
            params=tree["params"],
            model_state=tree["model_state"],
            opt_state=tree["opt_state"],
            nonfinite_step=_placed_zero(tree["step"]),
        )
        return state, position

    def _restore_checked(self, step: int, abstract: Any) -> tuple[Any, Position]:
        """Restore ``step`` against ``abstract``; raise if it is not exactly that state."""
        _check_like(self._manager.item_metadata(step)["state"], abstract)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), position=ocp.args.JsonRestore()
            ),
        )
        record = dict(restored["position"])
        expected_sha256 = record.pop("state_sha256")
        tree = restored["state"]
        _check_like(tree, abstract)
        if tree_sha256(tree) != expected_sha256:
            raise ValueError("its arrays do not match the SHA-256 saved with them")
        return tree, Position(**record)

    def close(self) -> None:
        """Wait for pending work and release the manager, if it was opened."""
        if "_manager" in self.__dict__:
            self._manager.close()


def _placed_zero(like: jax.Array) -> jax.Array:
    """Return a new array of zeros with ``like``'s shape, dtype and sharding, put, not computed."""
    return global_array(np.zeros(like.shape, like.dtype), like.sharding)


def _abstract_leaf(leaf: Any) -> jax.ShapeDtypeStruct:
    """Return the shape, dtype and sharding that ``leaf`` restores to.

    The sharding is the leaf's own, or, for a leaf without one, the first local device,
    so that every leaf comes back a ``jax.Array``.
    """
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


def _check_like(tree: Any, abstract: Any) -> None:
    """Raise ValueError unless ``tree``'s leaves have ``abstract``'s paths, shapes and dtypes.

    ``tree`` may be restored arrays or Orbax's metadata of them; paths are compared as
    text (``params/out/kernel``), so the containers' types do not matter.
    """
    have, want = _leaf_specs(tree), _leaf_specs(abstract)
    if have.keys() != want.keys():
        extra, missing = sorted(have.keys() - want.keys()), sorted(want.keys() - have.keys())
        raise ValueError(
            f"its arrays are not this model's (unexpected: {', '.join(extra[:4]) or 'none'}; "
            f"missing: {', '.join(missing[:4]) or 'none'})"
        )
    for path, spec in sorted(want.items(), key=lambda item: not item[0].startswith("params")):
        if have[path] != spec:
            raise ValueError(f"{path} is {have[path]}, this model needs {spec}")


def _leaf_specs(tree: Any) -> dict[str, str]:
    """Return ``{"a/b/c": "float32[2, 3]"}`` for every array leaf of ``tree``."""
    return {
        path: f"{np.dtype(leaf.dtype).name}{list(leaf.shape)}" for path, leaf in named_leaves(tree)
    }


def _write_file_list(step_dir: Path) -> None:
    """Record the size and SHA-256 of every file of a finished step folder.

    Checked by :func:`_verify_files` before Orbax reads the folder, so that a truncated
    or missing file is reported by name instead of failing inside Orbax's parallel
    reads. A process killed before this is written leaves a complete checkpoint
    without the list; it is restored unverified (its arrays' SHA-256 is still checked).
    """
    files = {
        str(path.relative_to(step_dir)): {"size": path.stat().st_size, "sha256": _file_sha256(path)}
        for path in sorted(step_dir.rglob("*"))
        if path.is_file() and path.name != FILE_LIST
    }
    tmp = step_dir / (FILE_LIST + ".tmp")
    tmp.write_text(json.dumps(files, indent=1) + "\n")
    tmp.replace(step_dir / FILE_LIST)


def _verify_files(step_dir: Path) -> None:
    """Raise ValueError naming the first file of ``step_dir`` that differs from its list."""
    listing = step_dir / FILE_LIST
    if not listing.exists():
        return
    for name, expected in json.loads(listing.read_text()).items():
        path = step_dir / name
        if not path.is_file():
            raise ValueError(f"its file {name} is missing")
        if path.stat().st_size != expected["size"]:
            raise ValueError(
                f"its file {name} has {path.stat().st_size} bytes, {expected['size']} were written"
            )
        if _file_sha256(path) != expected["sha256"]:
            raise ValueError(f"its file {name} does not match the SHA-256 written with it")


def _file_sha256(path: Path) -> str:
    """Return the SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _one_line(error: BaseException) -> str:
    """Return ``error`` as one short line: its type and the first line of its message."""
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else ""
    return f"{type(error).__name__}: {first[:300]}"
