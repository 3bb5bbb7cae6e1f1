"""A plain PyTorch training script (no graddoctor in it): a deep sigmoid MLP on the digits data.

    python examples/train_mlp.py --epochs 5
    graddoctor run -- python examples/train_mlp.py --epochs 5     # the same, diagnosed

Sixteen sigmoid layers: sigmoid' is at most 0.25, so the error signal shrinks layer after layer
on its way back and the first layers hardly learn (the vanishing gradient). The data are
scikit-learn's bundled 8x8 digits (1,797 images, 10 classes); nothing is downloaded.
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F


def make_model(depth: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(64 if i == 0 else width, width), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x))
    train, val = order[:1400], order[1400:]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[train], y[train]), batch_size=64,
                                         shuffle=True)
    model = make_model(args.depth, args.width)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    for epoch in range(args.epochs):
        model.train()
        total = 0.0
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        model.eval()
        with torch.no_grad():
            acc = (model(x[val]).argmax(1) == y[val]).float().mean().item()
        print(f"epoch {epoch + 1}: train loss {total / len(train):.3f}, val acc {acc:.3f}")


if __name__ == "__main__":
    main()
