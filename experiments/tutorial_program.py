"""The tutorial's own program: section 4.4 of ``shared/seed/000_4583a0969e047e37.txt``.

This is the code a jaxcnn user started from, as the tutorial prints it (torchvision's MNIST
dataset and DataLoader, ``transforms.ToTensor``, a test pass over all 10,000 test images every
100 batches), so that ``experiments/bench.py`` compares jaxcnn with it rather than with a
tuned rewrite. The only changes, each marked ``# bench:``:

- the data root comes from ``$TUTORIAL_DATA_ROOT`` (default ``./data``, the tutorial's);
  torchvision finds the original ``.gz`` files in ``<root>/MNIST/raw``, checks their MD5 and
  extracts them there, so no download happens (``bench.py`` lays that folder out);
- the number of epochs comes from ``$TUTORIAL_EPOCHS`` (default 3, the tutorial's);
- timestamps of its phases go to the file named by ``$TUTORIAL_TIMINGS`` as one JSON object
  at the end: imports done, data ready, model built, the training loop's seconds and, within
  them, the seconds of the test passes.

    python experiments/tutorial_program.py   # with torch and torchvision installed
"""

import time  # bench:

_T0 = time.time()  # bench:
import json  # bench:  # noqa: E402
import os  # bench:  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402, F401  (imported by the tutorial, unused)
import numpy as np  # noqa: E402, F401
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402, F401, N812
import torch.optim as optim  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

_TIMES = {"imported": time.time() - _T0}  # bench:

# 定义超参数
input_size = 28  # 图像的总尺寸28*28
num_classes = 10  # 标签的种类数
num_epochs = int(os.environ.get("TUTORIAL_EPOCHS", "3"))  # bench: 训练的总循环周期
batch_size = 64  # 一个(批次)的大小,64张图片
root = os.environ.get("TUTORIAL_DATA_ROOT", "./data")  # bench:

# 训练集
train_dataset = datasets.MNIST(
    root=root, train=True, transform=transforms.ToTensor(), download=True
)
# 测试集
test_dataset = datasets.MNIST(
    root=root, train=False, transform=transforms.ToTensor(), download=True
)

# 构建batch数据
train_loader = torch.utils.data.DataLoader(
    dataset=train_dataset, batch_size=batch_size, shuffle=True
)
test_loader = torch.utils.data.DataLoader(dataset=test_dataset, batch_size=batch_size, shuffle=True)
_TIMES["data"] = time.time() - _T0  # bench:


class CNN(nn.Module):
    def __init__(self):
        super(CNN, self).__init__()  # noqa: UP008
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels=1, out_channels=16, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2),
        )  # 14*14*16
        self.conv2 = nn.Sequential(
            nn.Conv2d(in_channels=16, out_channels=32, kernel_size=5, stride=1, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2),
        )  # 7*7*32
        self.out = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = self.conv2(x)
        x = x.view(x.size(0), -1)
        output = self.out(x)
        return output


def accuracy(predictions, labels):
    pred = torch.max(predictions.data, 1)[1]
    rights = pred.eq(labels.data).cpu().sum()
    return rights, len(labels)


net = CNN()
criterion = nn.CrossEntropyLoss()
optimizer = optim.Adam(net.parameters(), lr=0.001)
_TIMES["model"] = time.time() - _T0  # bench:
_train_start, _test_seconds = time.time(), 0.0  # bench:

for epoch in range(num_epochs):
    train_rights = []
    for batch_idx, (data, target) in enumerate(train_loader):
        net.train()
        output = net(data)
        loss = criterion(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rights = accuracy(output, target)
        train_rights.append(rights)
        if batch_idx % 100 == 0:
            _test_start = time.time()  # bench:
            net.eval()
            val_rights = []
            for data, target in test_loader:
                output = net(data)
                right = accuracy(output, target)
                val_rights.append(right)
            train_r = (sum([top[0] for top in train_rights]), sum([top[1] for top in train_rights]))
            val_r = (sum([top[0] for top in val_rights]), sum([top[1] for top in val_rights]))
            _test_seconds += time.time() - _test_start  # bench:

            print(
                "当前epoch: {}[{}/{}({:.0f}%)]\t损失:{:.6f}\t训练集准确率:{:.2f}%\t测试集正确率:{:.2f}%".format(  # noqa: E501, UP032
                    epoch,
                    batch_idx * batch_size,
                    len(train_loader.dataset),
                    100.0 * batch_idx / len(train_loader),
                    loss.data,
                    100.0 * train_r[0] / train_r[1],
                    100.0 * val_r[0] / val_r[1],
                )
            )

_TIMES.update(train=time.time() - _train_start, test=_test_seconds, end=time.time() - _T0)
if os.environ.get("TUTORIAL_TIMINGS"):  # bench:
    with open(os.environ["TUTORIAL_TIMINGS"], "w") as _timings:
        json.dump({"start": _T0, **_TIMES}, _timings)
