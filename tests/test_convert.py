"""``jaxcnn.convert``: the tutorial's PyTorch state_dict into a jaxcnn checkpoint and back."""

from __future__ import annotations

import os
import pickle
import sys

import jax
import numpy as np
import pytest
from helpers.common import file_digests, run_cli

from jaxcnn import convert, data
from jaxcnn.config import TrainConfig
from jaxcnn.models import torch_interop
from jaxcnn.training import step as steps
from jaxcnn.training import workdir
from jaxcnn.training.state import new_state
from jaxcnn.trees import named_leaves


@pytest.fixture(scope="module")
def torch():
    """PyTorch, which CI installs; elsewhere these tests say they need it and skip."""
    try:
        import torch
    except ImportError:
        if os.environ.get("JAXCNN_REQUIRE_TORCH"):
            pytest.fail("JAXCNN_REQUIRE_TORCH is set but PyTorch is not installed")
        pytest.skip("PyTorch is not installed: pip install torch==2.13.0 (the bench extra)")
    torch.manual_seed(0)
    return torch


def convert_from(path, workdir_path) -> int:
    return run_cli(convert.cli_main, ["--from-torch", str(path), "--workdir", str(workdir_path)])


def test_round_trip_gives_identical_tensors(torch, tmp_path):
    net = torch_interop.seed_cnn()
    original = tmp_path / "model.pt"
    torch.save(net.state_dict(), original)
    assert convert_from(original, tmp_path / "run") == 0
    back = tmp_path / "back.pt"
    argv = ["--to-torch", str(back), "--workdir", str(tmp_path / "run")]
    assert run_cli(convert.cli_main, argv) == 0
    before, after = torch.load(original, weights_only=True), torch.load(back, weights_only=True)
    assert list(before) == list(after)
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key


def to_nchw(torch, images: np.ndarray):
    """uint8 (N, 28, 28, 1) -> float (N, 1, 28, 28) in [0, 1], as ToTensor and the loader give."""
    return torch.from_numpy(images[..., 0].astype(np.float32) / 255.0).unsqueeze(1)


def train_torch_model(torch, split: data.Split, steps_to_take: int):
    net = torch_interop.seed_cnn()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = to_nchw(torch, split.images)
    labels = torch.from_numpy(split.labels.astype(np.int64))
    for step in range(steps_to_take):
        batch = slice(64 * step, 64 * step + 64)
        loss = torch.nn.functional.cross_entropy(net(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def test_a_trained_torch_model_and_its_conversion_agree_on_all_test_images(
    torch, mnist, tmp_path, capsys
):
    net = train_torch_model(torch, mnist["train"], 100)
    path = tmp_path / "trained.pt"
    torch.save(net.state_dict(), path)
    assert convert_from(path, tmp_path / "run") == 0
    _, state, _, step = workdir.restore_run(tmp_path / "run")
    assert step == 0
    test = mnist["test"]
    with torch.no_grad():
        nchw = to_nchw(torch, test.images)
        torch_logits = net.eval()(nchw).numpy()
    predict = jax.jit(steps.predict_logits)
    jax_logits = np.concatenate(
        [np.asarray(predict(state, test.images[i : i + 1000])) for i in range(0, 10_000, 1000)]
    )
    assert (torch_logits.argmax(1) == jax_logits.argmax(1)).all()
    assert np.abs(torch_logits - jax_logits).max() < 1e-4
    assert (jax_logits.argmax(1) == test.labels).mean() > 0.85  # it did learn something


def test_a_converted_run_can_be_resumed_by_train(torch, data_dir, tmp_path, capsys):
    from jaxcnn import train

    path = tmp_path / "model.pt"
    torch.save(torch_interop.seed_cnn().state_dict(), path)
    assert convert_from(path, tmp_path / "run") == 0
    argv = ["--max-steps", "5", "--data-dir", str(data_dir), "--workdir", str(tmp_path / "run")]
    assert run_cli(train.cli_main, argv) == 0
    assert "resuming from the checkpoint at step 0" in capsys.readouterr().out


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-jaxcnn-test",))


def bad_file(kind: str, folder, torch):
    path = folder / f"{kind}.pt"
    good = {k: v.clone() for k, v in torch_interop.seed_cnn().state_dict().items()}
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "code":
        path.write_bytes(pickle.dumps({"conv1.0.weight": RunsCode()}, protocol=2))
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "missing-key":
        del good["out.bias"]
        torch.save(good, path)
    elif kind == "extra-key":
        good["fc2.weight"] = torch.zeros(2)
        torch.save(good, path)
    elif kind == "wrong-shape":
        good["out.weight"] = torch.zeros(10, 100)
        torch.save(good, path)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("text", "cannot be loaded as PyTorch weights"),
        ("code", "cannot be loaded as PyTorch weights"),
        ("tensor", "is not a state_dict"),
        ("missing-key", "missing keys out.bias"),
        ("extra-key", "unexpected keys fc2.weight"),
        ("wrong-shape", "out.weight [10, 100] (expected [10, 1568])"),
    ],
)
def test_bad_files_are_refused_with_exit_2(kind, message, torch, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = bad_file(kind, tmp_path, torch)
    assert convert_from(path, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "pwned-by-jaxcnn-test").exists()  # no code from the file ran


def test_nothing_is_overwritten(torch, trained, tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(torch_interop.seed_cnn().state_dict(), path)
    before = file_digests(trained)
    assert convert_from(path, trained) == 2
    assert "not empty" in capsys.readouterr().err
    argv = ["--to-torch", str(path), "--workdir", str(trained)]
    assert run_cli(convert.cli_main, argv) == 2
    assert "exists" in capsys.readouterr().err
    assert file_digests(trained) == before


def test_a_file_for_a_folder_and_a_missing_folder_are_refused(torch, trained, tmp_path, capsys):
    path = tmp_path / "model.pt"
    torch.save(torch_interop.seed_cnn().state_dict(), path)
    (tmp_path / "afile").write_text("the user's file")
    assert convert_from(path, tmp_path / "afile") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile' is a file; give a new folder" in err
    argv = ["--to-torch", str(tmp_path / "no" / "back.pt"), "--workdir", str(trained)]
    assert run_cli(convert.cli_main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folder" in err and "does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "model.pt"]
    assert (tmp_path / "afile").read_text() == "the user's file"


def test_without_torch_it_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    (tmp_path / "model.pt").write_bytes(b"x")
    assert convert_from(tmp_path / "model.pt", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err and "torch" in err


def test_same_weights_give_the_same_logits_loss_and_gradients_as_pytorch(torch, mnist):
    """The benchmark's premise: with converted weights both programs compute the same step.

    Logits, loss and every gradient agree to 1e-5 (absolute; the values are O(1) and
    smaller) on a real batch of 64, the last 32 of them padding in jaxcnn's batch.
    """
    net = torch_interop.seed_cnn()
    split = mnist["train"]
    images, labels = split.images[:32], split.labels[:32]
    net.zero_grad()
    torch_logits = net(to_nchw(torch, images))
    torch_loss = torch.nn.functional.cross_entropy(
        torch_logits, torch.from_numpy(labels.astype(np.int64))
    )
    torch_loss.backward()
    torch_grads = torch_interop.params_from_state_dict(
        {name: p.grad.numpy() for name, p in net.named_parameters()}
    )
    state_dict = {key: value.numpy() for key, value in net.state_dict().items()}
    state = new_state(TrainConfig()).replace(
        params=jax.tree.map(np.asarray, torch_interop.params_from_state_dict(state_dict))
    )
    mask = np.arange(64) < 32
    batch = data.make_batch(split, np.where(mask, np.arange(64), 0), mask.astype(np.float32))
    (loss, (logits, _)), grads = jax.value_and_grad(steps.loss_fn, has_aux=True)(
        state.params, state, batch
    )
    np.testing.assert_allclose(logits[:32], torch_logits.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(loss, torch_loss.item(), atol=1e-5)
    for (path, got), (_, expected) in zip(
        named_leaves(grads), named_leaves(torch_grads), strict=True
    ):
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=path)
