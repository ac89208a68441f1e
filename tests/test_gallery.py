"""``jaxcnn.evaluate --gallery``: the misclassified test images of a real checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.common import run_cli
from PIL import Image

from jaxcnn import data, evaluate
from jaxcnn.inspection import gallery
from jaxcnn.training import workdir


def gallery_text(path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.text["jaxcnn"])


def test_every_mistake_drawn_most_confident_first(trained, data_dir, mnist, tmp_path, capsys):
    out = tmp_path / "mistakes.png"
    argv = ["--workdir", str(trained), "--data-dir", str(data_dir), "--json"]
    assert run_cli(evaluate.cli_main, [*argv, "--gallery", str(out), "--gallery-max", "10000"]) == 0
    report = json.loads(capsys.readouterr().out)
    errors = report["count"] - report["correct"]
    assert 100 < errors < 700  # about 96% right after 300 steps
    assert report["gallery"] == {"path": str(out), "drawn": errors, "mistakes": errors}
    drawn = gallery_text(out)
    assert drawn["drawn"] == errors and len(set(drawn["indices"])) == errors
    with Image.open(out) as image:
        assert image.size == (1000, 24 + 132 * -(-errors // 10))  # 10 columns of 100×132
        first_cell = np.asarray(image.convert("L"))[24 + 4 : 24 + 4 + 84, 8 : 8 + 84]
    # the right images, in the right order
    _, state, _, _ = workdir.restore_run(trained)
    batches = data.fixed_batches(mnist["test"], 1000)
    probabilities, labels = evaluate.predict_probabilities(state, batches)
    indices = np.array(drawn["indices"])
    assert np.all(probabilities[indices].argmax(-1) != labels[indices])
    confidence = probabilities[indices].max(-1)
    assert np.all(np.diff(confidence) <= 0)
    first_image = mnist["test"].images[indices[0], :, :, 0]
    np.testing.assert_array_equal(first_cell, np.kron(first_image, np.ones((3, 3), np.uint8)))


def test_the_default_cap_draws_the_100_most_confident(trained, data_dir, tmp_path, capsys):
    out = tmp_path / "top.png"
    argv = ["--workdir", str(trained), "--data-dir", str(data_dir), "--gallery", str(out)]
    assert run_cli(evaluate.cli_main, argv) == 0
    last_line = capsys.readouterr().out.splitlines()[-1]
    drawn = gallery_text(out)
    assert last_line == (
        f"wrote {out}: 100 of {drawn['mistakes']} misclassified test images, most confident first"
    )
    assert drawn["drawn"] == gallery.DEFAULT_LIMIT == 100 < drawn["mistakes"]
    with Image.open(out) as image:
        assert image.size == (1000, 24 + 10 * 132)


@pytest.mark.parametrize(
    ("name", "extra", "problem"),
    [
        ("taken.png", [], "exists"),
        ("no/such/folder/g.png", [], "does not exist"),
        ("gallery.jpg", [], "must end in .png"),
        ("fine.png", ["--gallery-max", "0"], "--gallery-max"),
    ],
)
def test_a_bad_gallery_target_is_refused_and_nothing_is_overwritten(
    name, extra, problem, trained, tmp_path, capsys
):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"the user's picture")
    target = tmp_path / name
    argv = ["--workdir", str(trained), "--gallery", str(target), *extra]
    assert run_cli(evaluate.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err
    assert taken.read_bytes() == b"the user's picture"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken.png"]
