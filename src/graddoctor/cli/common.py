"""Flags shared by several commands (network, data, training) and their conversion."""
from __future__ import annotations

import argparse

from rich.console import Console

from .. import data as data_mod
from ..errors import GradDoctorError
from ..nets import NetSpec
from ..training import TrainConfig

console = Console()


def add_net_args(p: argparse.ArgumentParser) -> None:
    """--kind --depth --width --activation ... (the NetSpec fields)."""
    g = p.add_argument_group("network")
    g.add_argument("--kind", default="mlp", help="mlp | cnn (default: mlp)")
    g.add_argument("--depth", type=int, default=20, help="hidden layers (default: 20)")
    g.add_argument("--width", type=int, default=64, help="units or channels (default: 64)")
    g.add_argument("--activation", default="relu",
                   help="sigmoid, tanh, relu, leaky_relu, prelu, elu, selu, gelu, silu, identity")
    g.add_argument("--negative-slope", type=float, default=0.01, help="leaky_relu slope")
    g.add_argument("--init", default="torch_default",
                   help="torch_default, small, large, xavier_uniform, xavier_normal, he_uniform, "
                        "he_normal, lecun_normal, orthogonal")
    g.add_argument("--batchnorm", default="none", help="none | before_activation | after_activation")
    g.add_argument("--residual", type=int, default=0, help="skip connection every K layers (0: off)")
    g.add_argument("--residual-scale", type=float, default=1.0, help="branch scale, e.g. 0.22")
    g.add_argument("--dtype", default="float32", help="float32 | float64")


def add_train_args(p: argparse.ArgumentParser, epochs: int = 10) -> None:
    """--data --optimizer --lr ... (the data set and TrainConfig fields)."""
    g = p.add_argument_group("training")
    g.add_argument("--data", default="digits", help="digits | spirals | gaussians (default: digits)")
    g.add_argument("--optimizer", default="sgd", help="sgd | adam")
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--nesterov", action="store_true")
    g.add_argument("--loss", default="cross_entropy", help="cross_entropy | mse")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--clip", "--clip-norm", dest="clip", type=float, default=None,
                   help="clip the gradient norm to this value")
    g.add_argument("--seed", type=int, default=0)


def load_data(args: argparse.Namespace) -> data_mod.Dataset:
    """The data set the flags name, image-shaped for CNNs."""
    return data_mod.load(args.data, seed=args.seed, image=args.kind == "cnn")


def spec_from_args(args: argparse.Namespace, data: data_mod.Dataset) -> NetSpec:
    """NetSpec from the network flags, sized for the data."""
    return NetSpec(kind=args.kind, depth=args.depth, width=args.width, in_shape=data.in_shape,
                   out_features=data.n_classes, activation=args.activation,
                   negative_slope=args.negative_slope, init=args.init, batchnorm=args.batchnorm,
                   residual=args.residual, residual_scale=args.residual_scale, dtype=args.dtype)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from the training flags."""
    return TrainConfig(optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                       nesterov=args.nesterov, loss=args.loss, epochs=args.epochs,
                       batch_size=args.batch_size, clip_norm=args.clip, seed=args.seed)


def spec_flags(spec: NetSpec) -> str:
    """The flags that rebuild a spec: '--kind mlp --depth 20 ...'."""
    d = NetSpec()
    out = [f"--kind {spec.kind}", f"--depth {spec.depth}", f"--width {spec.width}",
           f"--activation {spec.activation}", f"--init {spec.init}", f"--batchnorm {spec.batchnorm}",
           f"--residual {spec.residual}"]
    if spec.residual_scale != d.residual_scale:
        out.append(f"--residual-scale {spec.residual_scale:g}")
    if spec.activation == "leaky_relu":
        out.append(f"--negative-slope {spec.negative_slope:g}")
    if spec.dtype != d.dtype:
        out.append(f"--dtype {spec.dtype}")
    return " ".join(out)


def positive(name: str, value: float) -> None:
    """Reject a non-positive numeric flag with one line."""
    if not value > 0:
        raise GradDoctorError(f"--{name} must be positive, got {value}")


def add_backend_args(g: argparse._ActionsContainer) -> None:
    """--workers --backend --address: where a grid's runs go (the local pool or a Ray cluster)."""
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local: worker processes (default: 1); ray: runs at a time (default: as many as Ray "
                        "schedules)")
    g.add_argument("--backend", default="local", metavar="NAME",
                   help="local (this machine, a process pool) | ray (one Ray task per run; pip install "
                        "'graddoctor[ray]') (default: local)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="--backend ray: the cluster (ray://HEAD:10001, HEAD:6379 or auto; default: start a "
                        "local Ray instance)")


def backend_line(args: argparse.Namespace) -> str:
    """'2 worker(s)' or 'on Ray at ADDR': where the runs go, for the first line a command prints."""
    if args.backend == "ray":
        return f"Ray tasks on {args.address or 'a local Ray instance'}"
    return f"{args.workers or 1} worker(s)"
