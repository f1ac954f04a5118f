"""load_cifar10 reads python-pickle batches from disk (never downloads) into [0, 1] images."""

import pickle

import numpy as np
import pytest
import torch

from zeroth.recipes.zo_ae_ds import Normalize, load_cifar10


def write_batches(folder, per_batch=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, per_batch)),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_reads_the_batches_from_the_folder_or_its_cifar_subfolder(tmp_path):
    write_batches(tmp_path / "cifar-10-batches-py")
    split = load_cifar10(str(tmp_path))
    assert split.x_train.shape == (20, 3, 32, 32) and split.x_test.shape == (4, 3, 32, 32)
    assert 0 <= float(split.x_train.min()) and float(split.x_train.max()) <= 1
    assert split.y_train.dtype == torch.long
    assert torch.equal(load_cifar10(str(tmp_path / "cifar-10-batches-py")).y_test, split.y_test)


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir.*nothing is downloaded"):
        load_cifar10(str(tmp_path))


def test_normalize_is_per_channel():
    x = torch.full((1, 3, 2, 2), 0.5)
    out = Normalize((0.5, 0.0, 1.0), (1.0, 0.5, 0.5))(x)
    assert out[0, :, 0, 0].tolist() == [0.0, 1.0, -1.0]
