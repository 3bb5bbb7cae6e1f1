"""Mistakes a factory can make, and what `graddoctor check` says about each (one line, exit status 2).

    graddoctor check examples/mistakes.py:targets_out_of_range
    graddoctor check examples/mistakes.py:frozen

tests/test_check_cli.py checks every one; benchmarks/run.py writes the table of what each prints
(docs/results/check-mistakes.md), which the documentation includes. `dict_model` and
`tuple_model` are not mistakes: a model may return a dict or a tuple (the prediction is its
`.logits`, ['logits'] or first tensor).
"""
import torch
from torch import nn


class Dict(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return {"hidden": x, "logits": self.lin(x)}


class Tuple(Dict):
    def forward(self, x):
        return self.lin(x), x


class Nothing(Dict):
    def forward(self, x):
        return {"n": 3}


class Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("custom backward exploded")


class BadBackward(Dict):
    def forward(self, x):
        return Boom.apply(self.lin(x))


def data(classes=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, generator=g), torch.randint(0, classes, (16,), generator=g)


def dict_model():
    """Fine: the model returns a dict with 'logits'."""
    return (Dict(), *data())


def tuple_model():
    """Fine: the model returns a tuple (its first tensor is the prediction)."""
    return (Tuple(), *data())


def no_tensor():
    """The model returns a dict with no tensor in it."""
    return (Nothing(), *data())


def targets_out_of_range():
    """Class targets up to 12 for a model with 3 outputs."""
    return (nn.Linear(4, 3), *data(classes=13))


def backward_raises():
    """A custom autograd Function whose backward raises."""
    return (BadBackward(), *data())


def frozen():
    """Every parameter has requires_grad=False."""
    return nn.Linear(4, 3).requires_grad_(False), *data()


def raises():
    """The factory itself raises."""
    raise RuntimeError("cannot build the model")


def step_raises():
    """The train_step raises (it looks for a key the batch lacks)."""
    def train_step(model, batch):
        raise KeyError("input_ids")
    return nn.Linear(4, 3), [data()], train_step


def step_not_scalar():
    """The train_step returns the model's output, not a loss."""
    return nn.Linear(4, 3), [data()], lambda model, batch: model(batch[0])


def step_detached():
    """The train_step returns a detached loss."""
    return nn.Linear(4, 3), [data()], lambda model, batch: model(batch[0]).sum().detach()


def step_returns_text():
    """The train_step returns a string."""
    return nn.Linear(4, 3), [data()], lambda model, batch: "loss"


def bad_optimizer():
    """make_optimizer returns the parameters, not an optimizer."""
    return nn.Linear(4, 3), [data()], lambda model, b: model(b[0]).sum(), lambda params: list(params)


def one_shot():
    """The data is an iterator of 2 batches, and --steps asks for 5."""
    return nn.Linear(4, 3), iter([data(), data()]), lambda model, b: model(b[0]).sum()


def empty():
    """The loader is empty."""
    return nn.Linear(4, 3), [], lambda model, b: model(b[0]).sum()


def not_a_model():
    """The factory returns a number."""
    return 42


def bad_batch():
    """Batches of inputs only, with no train_step to say what to do with them."""
    return nn.Linear(4, 3), [torch.randn(16, 4)]


def wrong_shape():
    """Inputs of 4 features for a model that takes 5."""
    return nn.Linear(5, 3), *data()
