"""A Lightning script (no graddoctor in it): a deep tanh MLP with small weights, a few steps."""
import sys

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F


class Net(pl.LightningModule):
    def __init__(self, depth: int = 8):
        super().__init__()
        layers = []
        for _ in range(depth):
            lin = nn.Linear(32, 32)
            nn.init.normal_(lin.weight, 0.0, 0.05)
            layers += [lin, nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(32, 4))

    def training_step(self, batch, i):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(128, 32), torch.randint(0, 4, (128,)))
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=32))
    print("trained", trainer.global_step, "steps")
