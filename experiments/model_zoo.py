"""Train each model on MNIST and Fashion-MNIST and write the results table into README.md.

Every run uses the training code of ``jaxcnn.train`` (the same state, compiled steps,
data order and evaluation), batch 64 and Adam, with the settings in ``PLANS``: the tutorial's
CNN for its full 3 epochs and the full test set; VGG-16 and the ResNets, which take
seconds per step on a 2-core CPU, for a stated number of steps and the first
``test_examples`` test images. Time per epoch is the measured training time (compiled
steps only, no test passes) scaled to 938 steps. For networks with BatchNorm the test
accuracy is measured twice: with the running statistics as training left them, and
after re-estimating them for the final weights (forward passes in training mode over
``RECALIBRATION_BATCHES`` training batches, parameters unchanged): after a few dozen
fast-moving Adam steps the running averages still describe earlier weights. Each run
appends one JSON line to ``experiments/model_zoo.jsonl``; the table in
``experiments/README.md`` (between the ``model_zoo`` markers) is then rewritten from all
lines, the newest per model and dataset.

    python experiments/model_zoo.py --data-dir DIR [--models cnn vgg16 ...]
        [--datasets mnist fashion_mnist] [--manual-dir-root ../shared/data]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import time
from pathlib import Path

import jax

from jaxcnn import data, models
from jaxcnn.config import TrainConfig
from jaxcnn.training import step as steps
from jaxcnn.training.compile import compile_steps, example_batches, resolve_chunks
from jaxcnn.training.evaluation import evaluate
from jaxcnn.training.parallel import create_placement
from jaxcnn.training.state import TrainState, new_state
from jaxcnn.training.timetable import Timetable

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "model_zoo.jsonl"
README = HERE / "README.md"
BEGIN, END = "<!-- model_zoo:begin -->", "<!-- model_zoo:end -->"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long a model trains and on how much of the test set it is measured."""

    learning_rate: float
    max_steps: int | None  # None: the tutorial's 3 epochs
    test_examples: int


RECALIBRATION_BATCHES = 50

PLANS = {
    "cnn": Plan(learning_rate=1e-3, max_steps=None, test_examples=10_000),
    "resnet18": Plan(learning_rate=1e-3, max_steps=40, test_examples=2_000),
    "resnet34": Plan(learning_rate=1e-3, max_steps=40, test_examples=2_000),
    "vgg16": Plan(learning_rate=1e-4, max_steps=40, test_examples=2_000),
}


def recalibrate_batch_stats(
    state: TrainState, split: data.Split, config: TrainConfig
) -> TrainState:
    """Return ``state`` with BatchNorm's running statistics re-estimated for its weights."""

    def update(state: TrainState, images: jax.Array) -> dict:
        variables = {"params": state.params, **state.model_state}
        _, model_state = state.apply_fn(
            variables, steps.to_float_images(images), train=True, mutable=["batch_stats"]
        )
        return model_state

    update = jax.jit(update)
    order = data.epoch_permutation(config.seed, config.epochs, len(split))
    for indices, _ in list(data.batch_indices(order, config.batch_size))[:RECALIBRATION_BATCHES]:
        state = state.replace(model_state=update(state, split.images[indices]))
    return state


def run(model: str, dataset: str, splits: dict[str, data.Split]) -> dict:
    """Train ``model`` on ``dataset`` by its plan; return the measured figures."""
    plan = PLANS[model]
    config = TrainConfig(
        model=model, dataset=dataset, learning_rate=plan.learning_rate, max_steps=plan.max_steps
    ).validate()
    test = data.Split(
        splits["test"].images[: plan.test_examples], splits["test"].labels[: plan.test_examples]
    )
    splits = {"train": splits["train"], "test": test}
    placement = create_placement(1)
    state = placement.replicate(new_state(config))
    params = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))
    chunks = resolve_chunks(config.chunks, state, placement, config.batch_size)
    compiled = compile_steps(
        state, *example_batches(config, splits, placement), placement, chunks=chunks
    )
    per_epoch = data.steps_per_epoch(len(splits["train"]), config.batch_size)
    steps_to_take = Timetable.of(config, len(splits["train"])).total_steps
    load_before = os.getloadavg()[0]
    steps_done, seconds = 0, 0.0
    for epoch in range(config.epochs):
        order = data.epoch_permutation(config.seed, epoch, len(splits["train"]))
        batches = list(data.batch_indices(order, config.batch_size))[: steps_to_take - steps_done]
        start = time.perf_counter()
        for indices, mask in batches:
            state, _ = compiled.step(state, data.make_batch(splits["train"], indices, mask))
        state = jax.block_until_ready(state)
        seconds += time.perf_counter() - start
        steps_done += len(batches)
        if steps_done >= steps_to_take:
            break
    test_batches = data.fixed_batches(test, config.eval_batch_size)
    result = evaluate(compiled.eval, state, test_batches)
    recalibrated = None
    if "batch_stats" in state.model_state:
        state = recalibrate_batch_stats(state, splits["train"], config)
        recalibrated = evaluate(compiled.eval, state, test_batches).accuracy
    return {
        "model": model,
        "dataset": dataset,
        "parameters": params,
        "steps": steps_done,
        "epochs": steps_done / per_epoch,
        "learning_rate": plan.learning_rate,
        "batch_size": config.batch_size,
        "test_examples": result.count,
        "test_accuracy": result.accuracy,
        "test_accuracy_recalibrated": recalibrated,
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / steps_done * per_epoch,
        "compile_seconds": compiled.seconds,
        "load_average": [load_before, os.getloadavg()[0]],
        "nonfinite_step": int(state.nonfinite_step),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
    }


def table(results: list[dict]) -> str:
    """Return the Markdown table of the newest result per model and dataset."""
    newest = {(r["model"], r["dataset"]): r for r in results}
    lines = [
        "| model | dataset | parameters | trained | test accuracy | BatchNorm re-estimated | "
        "time per epoch | load average |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for model in models.MODELS:
        for dataset in data.DATASETS:
            r = newest.get((model, dataset))
            if r is None:
                continue
            trained = f"{r['steps']} steps ({r['epochs']:.2f} epochs), Adam {r['learning_rate']:g}"
            accuracy = f"{100 * r['test_accuracy']:.2f}% of {r['test_examples']:,}"
            load = f"{r['load_average'][0]:.1f} → {r['load_average'][1]:.1f}"
            recalibrated = r.get("test_accuracy_recalibrated")
            again = "" if recalibrated is None else f"{100 * recalibrated:.2f}%"
            lines.append(
                f"| {model} | {dataset} | {r['parameters']:,} | {trained} | {accuracy} | "
                f"{again} | {r['seconds_per_epoch'] / 60:.1f} min | {load} |"
            )
    return "\n".join(lines)


def write_table(results: list[dict]) -> None:
    """Rewrite the table between the markers of ``experiments/README.md``."""
    text = README.read_text()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    README.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="tfds data dir")
    parser.add_argument("--manual-dir-root", default=str(HERE.parent.parent / "shared/data"))
    parser.add_argument("--models", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--datasets", nargs="+", default=list(data.DATASETS))
    args = parser.parse_args()
    for dataset in args.datasets:
        manual_dir = str(Path(args.manual_dir_root) / dataset)
        splits = data.load_dataset(dataset, args.data_dir, manual_dir)
        for model in args.models:
            result = run(model, dataset, splits)
            print(json.dumps(result), flush=True)
            with RESULTS.open("a") as out:
                out.write(json.dumps(result) + "\n")
    write_table([json.loads(line) for line in RESULTS.read_text().splitlines()])


if __name__ == "__main__":
    main()
