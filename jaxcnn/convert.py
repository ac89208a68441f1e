"""``python -m jaxcnn.convert``: the tutorial's PyTorch weights into a jaxcnn checkpoint and back.

``--from-torch model.pt --workdir W`` turns ``torch.save(net.state_dict(), "model.pt")``
of the tutorial's ``CNN`` into a new run in W: its ``config.json`` and a checkpoint at step 0
(the converted weights, a fresh Adam state, the start of the data order), which
``jaxcnn.evaluate``, ``jaxcnn.predict``, ``jaxcnn.grads`` and a resumed ``jaxcnn.train``
accept. ``--to-torch model.pt --workdir W [--step N]`` writes a checkpoint's weights as
such a state_dict. Needs PyTorch (the ``bench`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp

from jaxcnn.cli import (
    ArgumentParser,
    add_restore_flags,
    check_new_file,
    exit_process,
    run_command,
)
from jaxcnn.config import TrainConfig
from jaxcnn.errors import UsageError
from jaxcnn.models import torch_interop
from jaxcnn.training import workdir
from jaxcnn.training.checkpoints import CHECKPOINT_DIR, Checkpoints
from jaxcnn.training.state import new_state
from jaxcnn.training.timetable import Position

PROG = "python -m jaxcnn.convert"


def build_parser() -> ArgumentParser:
    """Return the command-line parser."""
    parser = ArgumentParser(
        prog=PROG,
        description="Convert the tutorial's PyTorch CNN weights (a state_dict with "
        "conv1.0, conv2.0 and out) into a jaxcnn checkpoint, or a jaxcnn checkpoint into "
        "such a state_dict. Kernels go OIHW <-> HWIO and the dense layer's inputs C*H*W "
        "<-> H*W*C. Files are loaded with torch.load(weights_only=True): no code in them "
        "runs. Needs PyTorch: pip install 'jaxcnn[bench]'.",
    )
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from-torch", type=Path, metavar="FILE", help="state_dict to read into a new run"
    )
    direction.add_argument(
        "--to-torch", type=Path, metavar="FILE", help="new file to write the state_dict to"
    )
    add_restore_flags(
        parser,
        workdir_help="with --from-torch: a new work dir to create; with --to-torch: a run's "
        "work dir",
        step_help="with --to-torch: the checkpoint (default: the newest)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="with --from-torch: the run's seed for its data order"
    )
    return parser


def from_torch(source: Path, path: Path, seed: int) -> int:
    """Write a new run in ``path`` whose step-0 checkpoint holds ``source``'s weights."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--workdir {str(path)!r} is a file; give a new folder")
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"--workdir {str(path)!r} is not empty; give a new folder")
    state_dict = torch_interop.load_state_dict(source)
    config = TrainConfig(seed=seed)
    fresh = new_state(config)
    params = {
        block: {name: {key: jnp.asarray(value, jnp.float32) for key, value in leaves.items()}
                for name, leaves in layer.items()} if block != "out"
        else {key: jnp.asarray(value, jnp.float32) for key, value in layer.items()}
        for block, layer in torch_interop.params_from_state_dict(state_dict).items()
    }  # fmt: skip
    state = fresh.replace(params=params, opt_state=fresh.tx.init(params))
    path.mkdir(parents=True, exist_ok=True)
    workdir.write_json(path / workdir.CONFIG, config.to_dict())
    checkpoints = Checkpoints(path, keep=config.keep)
    checkpoints.save(state, Position(epoch=0, batch=0, seed=seed), test_accuracy=None)
    checkpoints.close()
    print(f"wrote {path / CHECKPOINT_DIR}/0 from {source}: evaluate it with "
          f"python -m jaxcnn.evaluate --workdir {path}")  # fmt: skip
    return 0


def to_torch(target: Path, path: Path, step: int | None) -> int:
    """Write the weights of a checkpoint in ``path`` to ``target`` as the tutorial's state_dict."""
    torch_interop.require_torch()
    check_new_file("--to-torch", target)
    config, state, _, restored = workdir.restore_run(path, step)
    if config.model != "cnn":
        raise UsageError(f"--workdir {str(path)!r} holds a {config.model}, not the tutorial's cnn")
    torch_interop.save_state_dict(target, torch_interop.state_dict_from_params(state.params))
    print(f"wrote {target} from checkpoint step {restored} of {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Convert in the direction the flags say; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.from_torch is not None:
        return from_torch(args.from_torch, Path(args.workdir), args.seed)
    return to_torch(args.to_torch, Path(args.workdir), args.step)


cli_main = run_command(PROG, main)

if __name__ == "__main__":
    exit_process(cli_main())
