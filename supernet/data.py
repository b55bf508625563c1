"""Datasets with explicit, seeded train / held-out / test splits.

Search scores subnets on a *held-out* split carved from the official training data, never on
the test set, so the test top-1 reported at the end stays an honest estimate. The carving is
a seeded permutation: the same seed always gives the same three splits, with no overlap.

Small datasets (Fashion-MNIST, CIFAR, synthetic) are kept in memory as uint8 tensors and
augmented with plain tensor ops, which is several times faster on a CPU than PIL transforms.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info
from widthsearch.supernet.errors import DataError

from ._sources import DATA_ENV_VAR, DEBIAN_FASHION_MNIST, cifar, fashion_mnist, one_line, synthetic

__all__ = [
    "DATA_ENV_VAR",
    "DEBIAN_FASHION_MNIST",
    "DataSpec",
    "DataSplits",
    "InMemoryImages",
    "batch_resizer",
    "data_spec",
    "get_data",
    "list_datasets",
    "make_loader",
]

_IMAGEFOLDER = "imagefolder:"
# Per-channel mean/std of the official training images, used to normalise.
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CROP_PAD = {"fashion-mnist": 2, "cifar10": 4, "cifar100": 4, "synthetic": 2}


@dataclass(frozen=True)
class DataSpec:
    """What a model needs to know about a dataset, available without loading it."""

    name: str  # canonical dataset name, e.g. "fashion-mnist" or "imagefolder:/data/imagenet"
    num_classes: int  # classifier outputs
    in_chans: int  # image channels (1 for Fashion-MNIST)
    input_size: int  # side of the square network input, in pixels


@dataclass
class DataSplits:
    """The three disjoint splits of one dataset.

    Attributes:
        spec: Shape and class count of the data.
        train: Training split (augmented unless ``augment=False``).
        heldout: Carved from the training data, seeded; search scores on it, never on test.
        test: Official test (or validation) split, for the final report only.
    """

    spec: DataSpec
    train: Dataset
    heldout: Dataset
    test: Dataset
    heldout_digest: str = ""  # sha256 of which images are held out (files or indices)

    def check_heldout(self, recorded: str | None, *, where: str) -> None:
        """Refuse to score on another held-out split than the one training left out (e.g.
        files added to or removed from an image folder since); ``recorded`` from the
        supernet file (older files have none: nothing to check)."""
        if recorded and self.heldout_digest and recorded != self.heldout_digest:
            raise DataError(
                f"{where}: the held-out split differs from the one the supernet was trained "
                f"without ({self.spec.name} changed since?); scores would mix seen images"
            )


class InMemoryImages(Dataset):
    """uint8 images held in memory, normalised (and optionally augmented) per item.

    Augmentation draws from the dataset's own generator so runs are reproducible without
    touching the global RNG; ``make_loader`` reseeds it in each worker process, otherwise
    all workers would repeat the same crops.

    Args:
        images: ``(N, C, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor.
        indices: ``(N,)`` position of each image in the official split it came from (lets
            callers check that splits are disjoint).
        mean: Per-channel mean in ``[0, 1]`` units.
        std: Per-channel standard deviation in ``[0, 1]`` units.
        crop_pad: Random-crop padding in pixels; 0 disables augmentation entirely.
        flip: Random horizontal flips (only when ``crop_pad > 0``).
        seed: Seed of the augmentation generator.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pad: int = 0,
        flip: bool = False,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) uint8 tensor, got {images.dtype}")
        if not len(images) == len(labels) == len(indices):
            raise ValueError("images, labels and indices must have the same length")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.indices = indices.to(torch.int64)
        self.crop_pad = crop_pad
        self.flip = flip and crop_pad > 0
        # x / 255 then (x - mean) / std, folded into one scale and shift
        std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) / std_t
        self._generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation stream (called per DataLoader worker)."""
        self._generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i]
        if self.crop_pad > 0:
            image = self._augment(image)
        return image.float().mul_(self._scale).add_(self._shift), int(self.labels[i])

    def _augment(self, image: Tensor) -> Tensor:
        pad = self.crop_pad
        span = 2 * pad + 1
        # one RNG call per item: crop offset (y, x) and flip bit packed in one integer
        draw = int(torch.randint(span * span * 2, (1,), generator=self._generator))
        dy, dx, flip = draw // (2 * span), (draw // 2) % span, draw % 2
        h, w = image.shape[-2:]
        image = F.pad(image, (pad, pad, pad, pad))[:, dy : dy + h, dx : dx + w]
        if self.flip and flip:
            image = image.flip(-1)
        return image


def list_datasets() -> list[str]:
    """Names ``get_data`` accepts."""
    return ["fashion-mnist", "cifar10", "cifar100", "synthetic", "imagefolder:PATH"]


def data_spec(
    name: str, *, synthetic_in_chans: int = 1, synthetic_input_size: int = 28
) -> DataSpec:
    """Shape and class count of a dataset, without loading it (for building models).

    Raises:
        ValueError: Unknown dataset name.
        DataError: ``imagefolder:PATH`` whose ``train`` folder is missing.
    """
    key = _canonical(name)
    if key.startswith(_IMAGEFOLDER):
        train_dir, _ = _imagefolder_dirs(key[len(_IMAGEFOLDER) :], need_val=False)
        return DataSpec(key, len(_imagefolder_classes(train_dir)), 3, 224)
    if key == "synthetic":
        return DataSpec(key, 10, synthetic_in_chans, synthetic_input_size)
    return {
        "fashion-mnist": DataSpec(key, 10, 1, 28),
        "cifar10": DataSpec(key, 10, 3, 32),
        "cifar100": DataSpec(key, 100, 3, 32),
    }[key]


def get_data(
    name: str = "fashion-mnist",
    *,
    root: str | os.PathLike[str] | None = None,
    heldout_size: int = 5000,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    augment: bool = True,
    download: bool = True,
    synthetic_in_chans: int = 1,
    synthetic_input_size: int = 28,
) -> DataSplits:
    """Load a dataset as seeded train / held-out / test splits.

    Data is looked for in ``root``, else ``$WIDTHSEARCH_DATA``, else (Fashion-MNIST only)
    ``/usr/share/datasets/fashion-mnist``, else ``~/.cache/widthsearch``; torchvision
    downloads it there only when it is missing. An explicit ``root`` or
    ``$WIDTHSEARCH_DATA`` is the only place looked in, so a wrong path is reported rather
    than silently replaced by another copy.

    Args:
        name: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``synthetic`` or
            ``imagefolder:PATH`` (``PATH/train/<class>/*`` and ``PATH/val/<class>/*``).
        root: Folder holding the data.
        heldout_size: Images moved from the official training set to the held-out split.
        seed: Seeds the held-out carving, the limits and the augmentation stream.
        train_limit: Keep a seeded random subset of this many training images.
        test_limit: Keep a seeded random subset of this many test images.
        augment: Augment the training split (random crop with padding + horizontal flip).
        download: Let torchvision download a missing dataset.
        synthetic_in_chans: Channels of the ``synthetic`` images.
        synthetic_input_size: Side of the ``synthetic`` images.

    Returns:
        The splits; ``heldout`` and ``test`` are never augmented.

    Raises:
        ValueError: Unknown dataset name or bad option.
        DataError: Dataset missing (the message lists every place looked) or malformed, or
            too small for ``heldout_size``.
    """
    key = _canonical(name)
    _check_options(heldout_size=heldout_size, train_limit=train_limit, test_limit=test_limit)
    if key.startswith(_IMAGEFOLDER):
        return _imagefolder_splits(
            key, heldout_size, seed, train_limit, test_limit, augment=augment
        )
    spec = data_spec(
        key, synthetic_in_chans=synthetic_in_chans, synthetic_input_size=synthetic_input_size
    )
    if key == "fashion-mnist":
        arrays = fashion_mnist(root, download=download)
    elif key in ("cifar10", "cifar100"):
        arrays = cifar(key, root, download=download)
    else:
        _check_options(
            synthetic_in_chans=synthetic_in_chans, synthetic_input_size=synthetic_input_size
        )
        arrays = synthetic(synthetic_in_chans, synthetic_input_size)
    train_x, train_y, test_x, test_y = arrays
    mean, std = _STATS[key] if key in _STATS else _channel_stats(train_x)

    train_idx, heldout_idx = _carve(len(train_y), heldout_size, seed, train_limit, key)
    test_idx = _subset(len(test_y), test_limit, seed)

    def split(x: Tensor, y: Tensor, idx: np.ndarray, *, train: bool) -> InMemoryImages:
        index = torch.from_numpy(idx)
        pad = _CROP_PAD[key] if train and augment else 0
        return InMemoryImages(
            x[index], y[index], index, mean=mean, std=std, crop_pad=pad, flip=True, seed=seed
        )

    return DataSplits(
        spec=spec,
        train=split(train_x, train_y, train_idx, train=True),
        heldout=split(train_x, train_y, heldout_idx, train=False),
        test=split(test_x, test_y, test_idx, train=False),
        heldout_digest=_digest([key, len(train_y), *heldout_idx.tolist()]),
    )


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
    workers: int = 0,
    pin_memory: bool = False,
    indices: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader whose order (and worker augmentation) is fixed by ``seed``.

    The loader owns its generator, so the batch order does not depend on the global RNG:
    the same seed gives the same sequence of batches, epoch after epoch. ``indices`` (with
    ``shuffle=False``) are the items to load, in that order, instead of the whole dataset.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=indices,
        drop_last=drop_last,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_reseed_worker if workers > 0 else None,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def batch_resizer(data_size: int, model_size: int) -> Callable[[Tensor], Tensor]:
    """Batch transform from the data's image size to the model's input size (bilinear;
    the identity when they agree)."""
    if data_size == model_size:
        return lambda x: x

    def resize(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(model_size, model_size), mode="bilinear", align_corners=False)

    return resize


def _reseed_worker(worker_id: int) -> None:
    info = get_worker_info()
    reseed = getattr(info.dataset, "reseed", None) if info is not None else None
    if callable(reseed):
        reseed(info.seed)  # base seed (drawn from the loader's generator) + worker id


# ---- names and options ----------------------------------------------------------------


def _canonical(name: str) -> str:
    key = name.strip()
    if key.lower().startswith(_IMAGEFOLDER):
        path = key[len(_IMAGEFOLDER) :]
        if not path:
            raise ValueError("imagefolder needs a path: imagefolder:PATH")
        return _IMAGEFOLDER + path
    key = key.lower().replace("_", "-")
    if key not in ("fashion-mnist", "cifar10", "cifar100", "synthetic"):
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(list_datasets())}")
    return key


def _check_options(**values: int | None) -> None:
    for key, value in values.items():
        low = 0 if key == "heldout_size" else 1
        if value is not None and (not isinstance(value, int) or value < low):
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")


def _carve(
    n: int, heldout_size: int, seed: int, train_limit: int | None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, held-out) index arrays over the official training set, disjoint."""
    if heldout_size >= n:
        raise DataError(
            f"{name} has {n} training images: heldout_size={heldout_size} would leave none "
            "to train on; use a smaller heldout_size"
        )
    perm = np.random.default_rng(seed).permutation(n)
    train = perm[heldout_size:]
    if train_limit is not None:
        train = train[:train_limit]
    return np.sort(train), np.sort(perm[:heldout_size])


def _subset(n: int, limit: int | None, seed: int) -> np.ndarray:
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 1]).permutation(n)[:limit])


def _channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float().div_(255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


# ---- ImageFolder ----------------------------------------------------------------------


def _imagefolder_dirs(path: str, *, need_val: bool = True) -> tuple[Path, Path]:
    base = Path(path).expanduser()
    layout = "PATH/train/<class>/<image> and PATH/val/<class>/<image> (ImageNet layout)"
    for folder in (base / "train", base / "val") if need_val else (base / "train",):
        if not folder.is_dir():
            raise DataError(f"imagefolder: {folder} is not a folder; expected {layout}")
    return base / "train", base / "val"


def _imagefolder_classes(folder: Path) -> list[str]:
    from torchvision.datasets.folder import find_classes

    try:
        return find_classes(str(folder))[0]
    except FileNotFoundError as exc:
        raise DataError(f"imagefolder: no class folders in {folder}") from exc


def _imagefolder_splits(
    key: str,
    heldout_size: int,
    seed: int,
    train_limit: int | None,
    test_limit: int | None,
    *,
    augment: bool,
) -> DataSplits:
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    train_dir, val_dir = _imagefolder_dirs(key[len(_IMAGEFOLDER) :])
    normalize = T.Normalize(*_IMAGENET_STATS)
    eval_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    train_tf = T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    try:
        base = ImageFolder(str(train_dir), transform=eval_tf)
        val = ImageFolder(str(val_dir), transform=eval_tf)
    except FileNotFoundError as exc:
        raise DataError(f"imagefolder: {one_line(exc)}") from exc
    if val.classes != base.classes:
        raise DataError(f"imagefolder: class folders of {val_dir} differ from {train_dir}")
    train_ds = copy.copy(base)  # shares the file list, only the transform differs
    train_ds.transform = train_tf if augment else eval_tf
    train_idx, heldout_idx = _carve(len(base), heldout_size, seed, train_limit, key)
    test_idx = _subset(len(val), test_limit, seed)
    # the held-out images by file (relative path), not position: a changed folder shows
    heldout_files = [str(Path(base.samples[i][0]).relative_to(train_dir)) for i in heldout_idx]
    return DataSplits(
        spec=DataSpec(key, len(base.classes), 3, 224),
        train=Subset(train_ds, train_idx.tolist()),
        heldout=Subset(base, heldout_idx.tolist()),
        test=Subset(val, test_idx.tolist()),
        heldout_digest=_digest(heldout_files),
    )


def _digest(items: list[Any]) -> str:
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()
