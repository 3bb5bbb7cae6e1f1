"""Data sets: bundled digits, generated spirals/gaussians, the user's tensors and DataLoaders."""
import numpy as np
import pytest
import torch
from conftest import need
from torch.utils.data import DataLoader, TensorDataset

from graddoctor import data
from graddoctor.errors import GradDoctorError

DIGITS_TOTAL, DIGITS_VAL = 1797, 359  # scikit-learn's digits; round(0.2 x 1797) held out


@pytest.fixture(scope="module")
def digits():
    need("sklearn")  # digits ships with scikit-learn (the `data` extra; `make setup` installs it)
    return data.digits(seed=0)


def test_digits_shapes_and_classes(digits):
    assert len(digits.x_train) + len(digits.x_val) == DIGITS_TOTAL
    assert len(digits.x_val) == DIGITS_VAL
    assert digits.x_train.shape == (DIGITS_TOTAL - DIGITS_VAL, 64) and digits.in_shape == (64,)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    assert digits.n_classes == 10
    assert set(digits.y_train.tolist()) == set(digits.y_val.tolist()) == set(range(10))
    images = data.digits(seed=0, image=True)
    assert images.in_shape == (1, 8, 8) and images.x_val.shape == (DIGITS_VAL, 1, 8, 8)
    assert torch.equal(images.x_train.flatten(1), digits.x_train)
    assert torch.equal(images.y_train, digits.y_train)


def test_digits_split_keeps_every_sample_once(digits):
    raw = need("sklearn.datasets").load_digits()
    counts = np.bincount(np.concatenate([digits.y_train.numpy(), digits.y_val.numpy()]), minlength=10)
    assert counts.tolist() == np.bincount(raw.target, minlength=10).tolist()
    # un-standardised, train + val rows are exactly the raw rows (as a multiset)
    plain = data.digits(seed=0, standardise=False)
    rows = np.concatenate([plain.x_train.numpy(), plain.x_val.numpy()])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, raw.data.astype(np.float32)))


def test_digits_standardised_with_training_statistics(digits):
    plain = data.digits(seed=0, standardise=False)
    mu, sd = plain.x_train.mean(0), plain.x_train.std(0, unbiased=False)
    varying = sd > 1e-8
    assert varying.sum() > 50  # a few border pixels are always 0
    torch.testing.assert_close(digits.x_train[:, varying], (plain.x_train[:, varying] - mu[varying]) / sd[varying],
                               rtol=1e-4, atol=1e-4)  # float32 statistics
    torch.testing.assert_close(digits.x_val[:, varying], (plain.x_val[:, varying] - mu[varying]) / sd[varying],
                               rtol=1e-4, atol=1e-4)
    assert digits.x_train[:, varying].mean(0).abs().max() < 1e-5
    assert (digits.x_train[:, varying].std(0, unbiased=False) - 1).abs().max() < 1e-4
    # the validation part was not used for the statistics: its means are visibly non-zero
    assert digits.x_val[:, varying].mean(0).abs().max() > 0.05


def test_digits_split_is_seeded(digits):
    again = data.digits(seed=0)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_val, digits.y_val)
    other = data.digits(seed=1)
    assert not torch.equal(other.y_val, digits.y_val)
    assert data.load("digits", seed=0).y_val.tolist() == digits.y_val.tolist()


@pytest.mark.parametrize("n,classes", [(300, 4), (101, 3), (1500, 3)])
def test_spirals_sizes_classes_and_seed(n, classes):
    ds = data.spirals(n=n, classes=classes, seed=0)
    assert len(ds.x_train) + len(ds.x_val) == n and ds.in_shape == (2,)
    assert ds.n_classes == classes
    y = torch.cat([ds.y_train, ds.y_val])
    assert set(y.tolist()) == set(range(classes))
    assert np.bincount(y.numpy()).min() >= n // classes - classes  # balanced but for the last class
    assert torch.cat([ds.x_train, ds.x_val]).norm(dim=1).max() < 2  # radius <= 1, plus noise on the angle only
    assert torch.equal(data.spirals(n=n, classes=classes, seed=0).x_train, ds.x_train)
    assert not torch.equal(data.spirals(n=n, classes=classes, seed=1).x_train, ds.x_train)


def test_gaussians_sizes_classes_and_separation():
    ds = data.gaussians(n=2000, dim=7, classes=5, separation=3.0, seed=0)
    assert len(ds.x_train) + len(ds.x_val) == 2000 and ds.in_shape == (7,) and ds.n_classes == 5
    assert set(ds.y_train.tolist()) == set(range(5))
    means = torch.stack([ds.x_train[ds.y_train == k].mean(0) for k in range(5)])
    within = torch.cat([ds.x_train[ds.y_train == k] - means[k] for k in range(5)]).var(0)
    assert ((within - 1).abs() < 0.15).all()  # unit-variance blobs
    gaps = torch.pdist(means) / 7**0.5  # RMS coordinate difference between class means
    assert 1.0 < gaps.mean().item() < 6.0  # about `separation` = 3
    assert torch.equal(data.gaussians(n=100, seed=2).x_val, data.gaussians(n=100, seed=2).x_val)
    assert data.gaussians(n=333).x_train.shape[0] + data.gaussians(n=333).x_val.shape[0] == 333


def test_load_by_name_and_errors():
    assert data.load("spirals", n=60, classes=2).n_classes == 2
    assert data.load("gaussians", n=60, dim=3).in_shape == (3,)
    with pytest.raises(GradDoctorError, match="choose one of: digits, spirals, gaussians"):
        data.load("nope")
    with pytest.raises(GradDoctorError, match="unknown data set 'nope'"):
        data.load("nope", image=True)
    with pytest.raises(GradDoctorError, match="not image-shaped"):
        data.load("spirals", image=True)
    for bad in (dict(n=3, classes=3), dict(classes=0), dict(val_fraction=1.0), dict(val_fraction=-0.1)):
        with pytest.raises(GradDoctorError):
            data.spirals(**bad)


def test_from_tensors_split_classes_and_seed():
    x, y = torch.randn(50, 3), torch.arange(50) % 4
    ds = data.from_tensors(x, y, val_fraction=0.2, seed=0)
    assert (len(ds.x_train), len(ds.x_val)) == (40, 10) and ds.n_classes == 4
    both = torch.cat([ds.x_train, ds.x_val])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.tolist()))  # a permutation of x
    for xs, ys in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val)):  # pairs stay together
        for row, label in zip(xs, ys):
            assert y[(x == row).all(1)].item() == label.item()
    assert torch.equal(data.from_tensors(x, y, seed=0).x_val, ds.x_val)
    assert not torch.equal(data.from_tensors(x, y, seed=1).x_val, ds.x_val)
    regression = data.from_tensors(x, torch.randn(50, 2))
    assert regression.n_classes == 2 and regression.y_train.is_floating_point()
    assert data.from_tensors(np.ones((5, 2), np.float32), np.arange(5)).n_classes == 5  # numpy is fine


@pytest.mark.parametrize("x,y,kw,match", [
    (torch.randn(10, 2), torch.zeros(9, dtype=torch.long), {}, "10 samples but y has 9"),
    (torch.randn(1, 2), torch.zeros(1, dtype=torch.long), {}, "at least 2 samples"),
    (torch.randn(10, 2), torch.zeros(10, dtype=torch.long), dict(val_fraction=1.0), "val_fraction"),
    (torch.randn(10, 2), torch.zeros(10, dtype=torch.long), dict(val_fraction=-0.5), "val_fraction"),
], ids=["length-mismatch", "one-sample", "all-validation", "negative-fraction"])
def test_from_tensors_errors(x, y, kw, match):
    with pytest.raises(GradDoctorError, match=match):
        data.from_tensors(x, y, **kw)


def test_from_tensors_keeps_one_training_sample():
    ds = data.from_tensors(torch.randn(2, 2), torch.tensor([0, 1]), val_fraction=0.9)
    assert (len(ds.x_train), len(ds.x_val)) == (1, 1)


def test_from_loader():
    x, y = torch.randn(40, 3), torch.arange(40) % 5
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    ds = data.from_loader(loader, val_fraction=0.25)
    assert (len(ds.x_train), len(ds.x_val), ds.n_classes) == (30, 10, 5)
    with_val = data.from_loader(loader, DataLoader(TensorDataset(x[:8], y[:8]), batch_size=3))
    assert torch.equal(with_val.x_train, x) and torch.equal(with_val.x_val, x[:8])
    with pytest.raises(GradDoctorError, match=r"\(x, y\) pairs"):
        data.from_loader([torch.randn(4, 3)])
    with pytest.raises(GradDoctorError, match="no batches"):
        data.from_loader([])


def test_dataset_to_casts_inputs_and_float_targets_only(digits):
    d64 = digits.to(dtype=torch.float64)
    assert d64.x_train.dtype == torch.float64 and d64.y_train.dtype == torch.int64
    reg = data.from_tensors(torch.randn(10, 2), torch.randn(10, 1)).to(dtype=torch.float64)
    assert reg.y_train.dtype == torch.float64
    assert "1438 train + 359 val" in repr(digits)
