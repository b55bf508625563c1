"""Seeded train / held-out / test splits, data discovery errors, synthetic data, loaders."""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset
from widthsearch.supernet import data as data_mod
from widthsearch.supernet._sources import FMNIST_FILES
from widthsearch.supernet.data import (
    DEBIAN_FASHION_MNIST,
    DataSpec,
    InMemoryImages,
    data_spec,
    get_data,
    make_loader,
)
from widthsearch.supernet.errors import DataError

_HAVE_FMNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file()
_NO_FMNIST = f"Fashion-MNIST not in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)"
# In CI (`make test` installs the data first) a missing dataset is a failure, not a skip.
needs_fmnist = pytest.mark.skipif(not _HAVE_FMNIST and not os.environ.get("CI"), reason=_NO_FMNIST)


@pytest.fixture(autouse=True)
def _fmnist_in_ci(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("skipif") and not _HAVE_FMNIST:
        pytest.fail(f"CI is set but {_NO_FMNIST}")


def _raw_idx(name: str) -> np.ndarray:
    """An official IDX file read here, independently of the loader: big-endian header
    (magic, dims), then uint8 data."""
    with gzip.open(DEBIAN_FASHION_MNIST / f"{name}.gz", "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _indices(dataset: InMemoryImages) -> set[int]:
    return set(dataset.indices.tolist())


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every torchvision download fail fast, as on a machine without network."""
    from torchvision.datasets import CIFAR10, MNIST

    def fail(self: object) -> None:
        raise RuntimeError("network unreachable (test)")

    monkeypatch.setattr(MNIST, "download", fail)
    monkeypatch.setattr(CIFAR10, "download", fail)


@pytest.fixture
def debian_fmnist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(data_mod.DATA_ENV_VAR, raising=False)


@needs_fmnist
@pytest.mark.usefixtures("debian_fmnist")
def test_fashion_mnist_splits() -> None:
    splits = get_data("fashion-mnist", heldout_size=5000, seed=0)
    assert splits.spec == DataSpec("fashion-mnist", 10, 1, 28)
    assert (len(splits.train), len(splits.heldout), len(splits.test)) == (55000, 5000, 10000)
    train, heldout = _indices(splits.train), _indices(splits.heldout)
    assert not train & heldout
    assert train | heldout == set(range(60000))
    assert _indices(splits.test) == set(range(10000))

    image, label = splits.heldout[0]
    assert image.dtype == torch.float32 and image.shape == (1, 28, 28)
    assert isinstance(label, int)
    assert splits.heldout.labels.min() >= 0 and splits.heldout.labels.max() <= 9
    assert set(splits.test.labels.tolist()) == set(range(10))
    # normalised with the dataset statistics: about zero mean, unit std
    batch = torch.stack([splits.heldout[i][0] for i in range(2000)])
    assert abs(batch.mean().item()) < 0.05 and abs(batch.std().item() - 1) < 0.05
    # held-out and test are never augmented: same item, same tensor
    torch.testing.assert_close(splits.heldout[3][0], splits.heldout[3][0], rtol=0, atol=0)
    # the training split is (random crop + flip changes pixels across draws)
    draws = torch.stack([splits.train[0][0] for _ in range(20)])
    assert not torch.all(draws == draws[0])


@needs_fmnist
@pytest.mark.usefixtures("debian_fmnist")
def test_fashion_mnist_seeding() -> None:
    a = get_data("fashion-mnist", heldout_size=1000, seed=3)
    b = get_data("fashion-mnist", heldout_size=1000, seed=3)
    c = get_data("fashion-mnist", heldout_size=1000, seed=4)
    assert torch.equal(a.heldout.indices, b.heldout.indices)
    assert torch.equal(a.train.indices, b.train.indices)
    assert not torch.equal(a.heldout.indices, c.heldout.indices)
    assert not _indices(c.train) & _indices(c.heldout)
    torch.testing.assert_close(a.heldout.images, b.heldout.images, rtol=0, atol=0)
    # the held-out images and labels really are those official training images and labels
    images = _raw_idx("train-images-idx3-ubyte")
    labels = _raw_idx("train-labels-idx1-ubyte")
    assert images.shape == (60000, 28, 28) and labels.shape == (60000,)
    for split in (a.heldout, c.heldout, a.train):
        idx = split.indices.numpy()
        assert np.array_equal(split.images[:, 0].numpy(), images[idx])
        assert np.array_equal(split.labels.numpy(), labels[idx])
    test_images = _raw_idx("t10k-images-idx3-ubyte")
    assert np.array_equal(a.test.images[:, 0].numpy(), test_images[a.test.indices.numpy()])


@needs_fmnist
@pytest.mark.usefixtures("debian_fmnist")
def test_fashion_mnist_limits() -> None:
    splits = get_data("fashion-mnist", heldout_size=500, train_limit=2000, test_limit=300)
    assert (len(splits.train), len(splits.heldout), len(splits.test)) == (2000, 500, 300)
    assert not _indices(splits.train) & _indices(splits.heldout)
    again = get_data("fashion-mnist", heldout_size=500, train_limit=2000, test_limit=300)
    assert torch.equal(splits.test.indices, again.test.indices)


def test_missing_root_lists_paths(tmp_path: Path, no_download: None) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        get_data("fashion-mnist", root=root)
    message = str(info.value)
    assert str(root) in message and str(root / "FashionMNIST" / "raw") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "WIDTHSEARCH_DATA" in message and "network unreachable" in message
    assert "\n" not in message


def test_env_var_is_the_only_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_download: None
) -> None:
    monkeypatch.setenv(data_mod.DATA_ENV_VAR, str(tmp_path))
    with pytest.raises(DataError, match=re.escape(str(tmp_path))) as info:
        get_data("fashion-mnist")
    looked, _, hint = str(info.value).partition("; ")
    assert str(DEBIAN_FASHION_MNIST) not in looked
    assert f"unset {data_mod.DATA_ENV_VAR}" in hint


def test_missing_cifar_without_network(tmp_path: Path, no_download: None) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "cifar-10-batches-py"))):
        get_data("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="download is disabled"):
        get_data("cifar100", root=tmp_path, download=False)


def test_corrupt_idx_file(tmp_path: Path) -> None:
    for stem in FMNIST_FILES.values():
        (tmp_path / stem).write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 3 of 5 bytes
    with pytest.raises(DataError, match="truncated"):
        get_data("fashion-mnist", root=tmp_path)


def test_unknown_dataset_and_bad_options() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*fashion-mnist.*imagefolder"):
        get_data("mnist")
    with pytest.raises(ValueError, match="heldout_size"):
        get_data("synthetic", heldout_size=-1)
    with pytest.raises(DataError, match="heldout_size=7000"):
        get_data("synthetic", heldout_size=7000)


def test_data_spec_without_loading() -> None:
    assert data_spec("fashion-mnist") == DataSpec("fashion-mnist", 10, 1, 28)
    assert data_spec("CIFAR100") == DataSpec("cifar100", 100, 3, 32)
    assert data_spec("synthetic", synthetic_in_chans=3, synthetic_input_size=32).in_chans == 3


def test_synthetic_is_deterministic_and_disjoint() -> None:
    a = get_data("synthetic", heldout_size=500, seed=1)
    b = get_data("synthetic", heldout_size=500, seed=1)
    c = get_data("synthetic", heldout_size=500, seed=2)
    assert (len(a.train), len(a.heldout), len(a.test)) == (6500, 500, 1000)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert torch.equal(a.heldout.indices, b.heldout.indices)
    assert not torch.equal(a.heldout.indices, c.heldout.indices)
    assert not _indices(a.train) & _indices(a.heldout)
    assert len(get_data("synthetic").train) == 2000  # default held-out leaves 2000
    three = get_data("synthetic", heldout_size=100, synthetic_in_chans=3, synthetic_input_size=32)
    assert three.spec == DataSpec("synthetic", 10, 3, 32)
    assert three.train[0][0].shape == (3, 32, 32)


def test_synthetic_is_learnable() -> None:
    splits = get_data("synthetic", heldout_size=500, train_limit=1000, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(28 * 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for images, labels in make_loader(splits.train, batch_size=64, shuffle=True):
        loss = torch.nn.functional.cross_entropy(model(images.flatten(1)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, labels = next(iter(make_loader(splits.test, batch_size=1000, shuffle=False)))
    with torch.no_grad():
        accuracy = (model(images.flatten(1)).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.5


def test_make_loader_order_is_seeded() -> None:
    dataset = TensorDataset(torch.arange(100))

    def order(seed: int) -> list[int]:
        loader = make_loader(dataset, batch_size=10, shuffle=True, seed=seed)
        return [int(i) for _ in range(2) for (batch,) in loader for i in batch]  # two epochs

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert order(5)[:100] != order(5)[100:]  # a new permutation each epoch
    assert sorted(order(5)[:100]) == list(range(100))
    loader = make_loader(dataset, batch_size=30, shuffle=False, drop_last=True)
    assert [len(b) for (b,) in loader] == [30, 30, 30]


def test_augmentation_is_seeded_and_workers_differ() -> None:
    image = torch.randint(0, 256, (1, 1, 12, 12), dtype=torch.uint8)

    def first_epoch(seed: int, workers: int) -> torch.Tensor:
        # 64 copies of one image: any difference between items comes from augmentation
        dataset = InMemoryImages(
            image.expand(64, -1, -1, -1),
            torch.zeros(64),
            torch.arange(64),
            mean=(0.5,),
            std=(0.25,),
            crop_pad=2,
            flip=True,
            seed=seed,
        )
        loader = make_loader(dataset, batch_size=16, shuffle=False, workers=workers)
        return torch.cat([images for images, _ in loader])

    serial = first_epoch(0, 0)
    torch.testing.assert_close(serial, first_epoch(0, 0), rtol=0, atol=0)
    assert not torch.equal(serial, first_epoch(1, 0))
    assert len({tuple(x.flatten().tolist()) for x in serial}) > 10  # many distinct crops
    parallel = first_epoch(0, 2)
    torch.testing.assert_close(parallel, first_epoch(0, 2), rtol=0, atol=0)
    # each worker reseeds its stream, so worker 1's batch is not a copy of worker 0's
    assert not torch.equal(parallel[:16], parallel[16:32])


def _image_folder(root: Path) -> str:
    """``root/{train,val}/{cat,dog}/*.png`` (6 and 2 images per class): its dataset name."""
    from PIL import Image

    for split, count in (("train", 6), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (i * 30, 0, 0)).save(folder / f"{i}.png")
    return f"imagefolder:{root}"


def test_imagefolder(tmp_path: Path, no_download: None) -> None:
    name = _image_folder(tmp_path)
    assert data_spec(name) == DataSpec(name, 2, 3, 224)
    splits = get_data(name, heldout_size=4, seed=0)
    assert (len(splits.train), len(splits.heldout), len(splits.test)) == (8, 4, 4)
    assert not set(splits.train.indices) & set(splits.heldout.indices)
    image, label = splits.heldout[0]
    assert image.shape == (3, 224, 224) and label in (0, 1)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "missing" / "train"))):
        get_data(f"imagefolder:{tmp_path / 'missing'}")


def test_imagefolder_heldout_is_recorded_by_file(tmp_path: Path, no_download: None) -> None:
    from PIL import Image

    name = _image_folder(tmp_path)
    first = get_data(name, heldout_size=4, seed=0)
    assert first.heldout_digest == get_data(name, heldout_size=4, seed=0).heldout_digest
    assert first.heldout_digest != get_data(name, heldout_size=4, seed=1).heldout_digest
    first.check_heldout(first.heldout_digest, where="search")  # the same split: accepted
    first.check_heldout(None, where="search")  # an older file records none: accepted
    # a file added to the folder shifts which images the seeded split holds out
    Image.new("RGB", (40, 30)).save(tmp_path / "train" / "cat" / "0a.png")
    changed = get_data(name, heldout_size=4, seed=0)
    assert changed.heldout_digest != first.heldout_digest
    with pytest.raises(DataError, match=r"^search: the held-out split differs"):
        changed.check_heldout(first.heldout_digest, where="search")
