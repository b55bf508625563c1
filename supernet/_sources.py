"""Where the in-memory datasets come from: Fashion-MNIST's IDX files, torchvision's CIFAR,
and the synthetic set, each as uint8 image and int64 label tensors (train, then test).

Splitting, normalising and augmenting them is :mod:`widthsearch.supernet.data`'s work.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import DataError

DATA_ENV_VAR = "WIDTHSEARCH_DATA"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# The default held-out of 5000 leaves 2000 synthetic images to train on.
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 7000, 1000
SYNTHETIC_DATA_SEED = 20240607  # the synthetic data never changes; `seed` only splits it

Arrays = tuple[Tensor, Tensor, Tensor, Tensor]  # train images, labels, test images, labels


# ---- Fashion-MNIST --------------------------------------------------------------------


def fashion_mnist(root: str | os.PathLike[str] | None, *, download: bool) -> Arrays:
    explicit = _explicit_root(root)
    places = [explicit] if explicit else [DEBIAN_FASHION_MNIST, _cache_dir()]
    looked: list[Path] = []
    for place in places:
        # flat folder (Debian), a fashion-mnist/ subfolder, or torchvision's layout
        for folder in (place, place / "fashion-mnist", place / "FashionMNIST" / "raw"):
            looked.append(folder)
            files = _idx_files(folder)
            if files is not None:
                return _read_fashion_mnist(files)
    target = places[-1]
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
            files = _idx_files(target / "FashionMNIST" / "raw")
            if files is None:
                raise RuntimeError("files missing after download")
            return _read_fashion_mnist(files)
        except DataError:
            raise
        except Exception as exc:  # any network or disk failure means "not available"
            failed = f"download into {target} failed ({one_line(exc)})"
    else:
        failed = "download disabled"
    apt = f"`apt-get install dataset-fashion-mnist` (installs {DEBIAN_FASHION_MNIST})"
    if explicit is None:
        how = f"Get it with {apt} or set {DATA_ENV_VAR} to a folder holding the four IDX files"
    elif root is not None:
        how = (
            f"Put the four IDX files in {explicit}, or pass no root to use {apt} or ${DATA_ENV_VAR}"
        )
    else:
        how = f"Put the four IDX files in {explicit}, or unset {DATA_ENV_VAR} to use {apt}"
    raise DataError(
        f"Fashion-MNIST not found: looked for {FMNIST_FILES['train_images']}.gz and the other "
        f"IDX files in {', '.join(map(str, looked))}; {failed}. {how}"
    )


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """Paths of the four IDX files in ``folder`` (gzipped or not), or None if any is missing."""
    found = {}
    for key, stem in FMNIST_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _read_fashion_mnist(files: dict[str, Path]) -> Arrays:
    arrays = {key: _read_idx(str(path)) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"Fashion-MNIST {split} files disagree: images {images.shape}, labels "
                f"{labels.shape} ({files[f'{split}_images'].parent})"
            )
        if labels.max() >= 10:
            raise DataError(f"Fashion-MNIST labels out of range in {files[f'{split}_labels']}")
    return (
        torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
        torch.from_numpy(arrays["test_labels"].astype(np.int64)),
    )


@functools.lru_cache(maxsize=8)
def _read_idx(path: str) -> np.ndarray:
    """Decode an IDX file of unsigned bytes (cached: repeated splits skip the gunzip)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {one_line(exc)}") from exc
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    offset = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    if len(data) - offset != math.prod(dims):
        raise DataError(f"{path} is truncated: header says {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


# ---- CIFAR ----------------------------------------------------------------------------


def cifar(name: str, root: str | os.PathLike[str] | None, *, download: bool) -> Arrays:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    place = _explicit_root(root) or _cache_dir()
    try:
        train, test = cls(str(place), train=True), cls(str(place), train=False)
    except RuntimeError as missing:
        if not download:
            raise DataError(
                f"{name} not found in {place / cls.base_folder} ({one_line(missing)}) and "
                f"download is disabled; pass root= or set {DATA_ENV_VAR}"
            ) from missing
        try:
            train = cls(str(place), train=True, download=True)
            test = cls(str(place), train=False, download=True)
        except Exception as exc:  # any network or disk failure means "not available"
            raise DataError(
                f"{name} not found in {place / cls.base_folder} and download into {place} "
                f"failed ({one_line(exc)}); download it there with network access, or pass "
                f"root= / set {DATA_ENV_VAR} to the folder holding {cls.base_folder}"
            ) from exc

    def arrays(ds: CIFAR10) -> tuple[Tensor, Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    return (*arrays(train), *arrays(test))


# ---- synthetic ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def synthetic(in_chans: int, size: int) -> Arrays:
    """Noisy, shifted copies of 10 smooth class prototypes: learnable, fast, deterministic.

    Prototypes are mirror-symmetric so horizontal-flip augmentation keeps the class.
    """
    g = torch.Generator().manual_seed(SYNTHETIC_DATA_SEED)
    coarse = torch.randn(10, in_chans, 7, 7, generator=g)
    protos = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    protos = (protos + protos.flip(-1)) / 2
    protos = protos / protos.std(dim=(1, 2, 3), keepdim=True)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(n) % 10)[torch.randperm(n, generator=g)]
        x = protos[labels] + 3.0 * torch.randn(n, in_chans, size, size, generator=g)
        shifts = torch.randint(-2, 3, (n, 2), generator=g)
        for i in range(n):  # small translations, so convolutions have something to learn
            x[i] = x[i].roll((int(shifts[i, 0]), int(shifts[i, 1])), dims=(1, 2))
        images = (128 + 16 * x).round_().clamp_(0, 255).to(torch.uint8)
        return images, labels

    return (*sample(SYNTHETIC_TRAIN), *sample(SYNTHETIC_TEST))


# ---- where to look ------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "widthsearch"


def _explicit_root(root: str | os.PathLike[str] | None) -> Path | None:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    return Path(env).expanduser() if env else None


def one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as one short line, for the messages that name what went wrong."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
