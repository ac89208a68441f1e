"""The tutorial's PyTorch program, reading the original MNIST files: the reference.

Same model, loss, optimizer, batch size, shuffling and evaluation schedule as the
seed (section 4.4), with two changes that do not alter the computation: the data come
from the four original ``.gz`` files (no torchvision, no download), and ``--seed`` seeds
the weights and the shuffle so that runs can be repeated. It prints the tutorial's log
line every ``--log-every`` batches and, at the end, the final test accuracy as JSON.

    python experiments/torch_seed.py --manual-dir ../shared/data/mnist [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jaxcnn.models.torch_interop import seed_cnn


def read_idx(path: Path) -> np.ndarray:
    """Return the array stored in an IDX file (the MNIST distribution format), gzipped."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(folder: Path, prefix: str) -> torch.utils.data.TensorDataset:
    """Images as float in [0, 1], N×1×28×28 (what ToTensor gives), and int64 labels."""
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return torch.utils.data.TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def accuracy(net: nn.Module, loader: torch.utils.data.DataLoader) -> float:
    """Fraction of ``loader``'s examples that ``net`` classifies correctly."""
    net.eval()
    right = total = 0
    with torch.no_grad():
        for data, target in loader:
            right += (net(data).argmax(1) == target).sum().item()
            total += len(target)
    return right / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manual-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train = load_split(args.manual_dir, "train")
    test = load_split(args.manual_dir, "t10k")
    train_loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test, batch_size=args.batch_size, shuffle=True)
    net = seed_cnn()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        right = total = 0
        for batch_idx, (data, target) in enumerate(train_loader):
            net.train()
            output = net(data)
            loss = criterion(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            right += (output.argmax(1) == target).sum().item()
            total += len(target)
            if batch_idx % args.log_every == 0:
                print(
                    f"epoch {epoch} [{batch_idx * args.batch_size}/{len(train)} "
                    f"({100.0 * batch_idx / len(train_loader):.0f}%)]\tloss: {loss.item():.6f}\t"
                    f"train accuracy: {100 * right / total:.2f}%\t"
                    f"test accuracy: {100 * accuracy(net, test_loader):.2f}%",
                    flush=True,
                )
    result = {
        "seed": args.seed,
        "test_accuracy": accuracy(net, test_loader),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
