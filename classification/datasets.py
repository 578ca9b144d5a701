"""Datasets of the image suite in their standard on-disk formats, split as in Appendix D.

==================  ===========================================================================================
``cifar10/100``     torchvision's CIFAR python batches (``--download`` fetches them); a seeded 45,000 / 5,000
                    train / validation split of the training set, the official 10,000 test images as test.
``tiny-imagenet``   the standard ``tiny-imagenet-200/`` folder (``train/<wnid>/images/*.JPEG``, ``val/images`` +
                    ``val/val_annotations.txt``): 50 training images per class (seeded) held out as validation
                    (90,000 / 10,000), the official validation set as test.
``fashion-mnist``   the original IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (Debian package
                    ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist); a seeded 55,000 /
                    5,000 split of the 60,000 training images, the 10,000 t10k images as test.
``imagefolder``     any ``ImageFolder`` tree ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/{test,val}/<class>/*``,
                    resized to ``--image-size``; ``--val-size`` images of train (seeded) held out as validation.
==================  ===========================================================================================

Splits are :class:`ImageSplit` objects. Small datasets are held in memory as uint8 ``[N, C, H, W]`` tensors (one
indexing op per batch); Tiny-ImageNet and ImageFolder trees stay on disk and are decoded by DataLoader workers into
uint8 tensors of one size. Augmentation and normalisation run on whole batches on the training device
(:mod:`classification.batches`).
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from focal_calibration.experiments.cli import DataNotFoundError, require_extra
from focal_calibration.validation import check_int

__all__ = ["ImageSplit", "DatasetSplits", "load_dataset", "DATASET_NAMES", "DATASET_INFO", "DatasetNotFoundError"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(DataNotFoundError):
    """The data files are not where they were looked for (the message says where and how to get them)."""


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    default_val_size: int


# Normalisation constants: CIFAR as the released code; Fashion-MNIST / Tiny-ImageNet from their training sets.
DATASET_INFO = {
    "cifar10": DatasetInfo(10, 3, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 5000),
    "cifar100": DatasetInfo(100, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 5000),
    "tiny-imagenet": DatasetInfo(200, 3, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), 50),
    "fashion-mnist": DatasetInfo(10, 1, (0.2860,), (0.3530,), 5000),
    "imagefolder": DatasetInfo(0, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 5000),
}
DATASET_NAMES = tuple(DATASET_INFO)  # == classification.names.DATASET_NAMES (the parser's list; tested)


@dataclass
class ImageSplit:
    """One split: either in-memory ``images`` (uint8 [N, C, H, W]) or an on-disk ``dataset`` of (uint8 CHW, label)."""
    labels: torch.Tensor                     # int64 [N]
    images: Optional[torch.Tensor] = None    # uint8 [N, C, H, W]
    dataset: Optional[torch.utils.data.Dataset] = None
    indices: Optional[torch.Tensor] = None   # rows of ``dataset`` in this split (on-disk only)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: torch.Tensor) -> "ImageSplit":
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.images is not None:
            return ImageSplit(self.labels[rows], images=self.images[rows])
        return ImageSplit(self.labels[rows], dataset=self.dataset, indices=self.indices[rows])


@dataclass
class DatasetSplits:
    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple
    std: tuple
    class_names: list = field(default_factory=list)


def _holdout(labels: torch.Tensor, val_size: int, seed: int, per_class: bool):
    """Seeded split of training rows into (train_rows, val_rows): ``val_size`` in total, or per class."""
    check_int(val_size, "--val-size", 1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    if not per_class:
        if val_size >= len(labels):
            raise ValueError(f"--val-size {val_size} leaves no training images (the training set has {len(labels)})")
        return order[val_size:].sort().values, order[:val_size].sort().values
    # per class: the first val_size rows of each class in the seeded order (vectorised rank within class)
    shuffled = labels[order]
    by_class = torch.sort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    if int(counts.min()) <= val_size:
        raise ValueError(f"--val-size {val_size} per class leaves no training images for a class with "
                         f"{int(counts.min())} images")
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(labels)) - starts[by_class.values]
    is_val = torch.zeros(len(labels), dtype=torch.bool)
    is_val[order[by_class.indices[rank < val_size]]] = True
    rows = torch.arange(len(labels))
    return rows[~is_val], rows[is_val]


def _check_labels(labels: torch.Tensor, num_classes: int, where) -> None:
    """Labels outside [0, num_classes) fail here, naming the file, not at the first batch without a name."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(f"{str(where)!r} holds the label {int(bad[0])} ({bad.numel()} labels outside 0..."
                         f"{num_classes - 1}): the file is corrupted or not this dataset's")


class _download_errors:
    """Turn a failed download (no network: ``URLError``; an unreachable mirror; a refused write) into one
    :class:`DatasetNotFoundError` saying what failed and how to get the data without a network."""

    def __init__(self, name: str, folder: Path, active: bool = True):
        self.name, self.folder, self.active = name, folder, active

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        from urllib.error import URLError

        if error is None or not self.active:
            return False
        # torchvision tries each mirror and reports "Error downloading <file>" once all failed
        download_failed = isinstance(error, (URLError, TimeoutError, ConnectionError)) or (
            isinstance(error, RuntimeError) and str(error).startswith("Error downloading"))
        if not download_failed:
            return False
        reason = " ".join(str(getattr(error, "reason", None) or error).split())  # one line
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise DatasetNotFoundError(f"downloading {self.name} into {str(self.folder)!r} failed ({reason}): check the "
                                   f"network, or copy the files there and drop --download") from error


def _not_found(name: str, looked: Sequence, how: str) -> DatasetNotFoundError:
    where = ", ".join(str(p) for p in looked)
    return DatasetNotFoundError(f"{name} not found: looked in {where}. {how}")


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format, optionally gzipped): big-endian magic, dims, then uint8 data.
    A file that cannot be read (truncated or corrupt gzip, random bytes) is a ``ValueError`` naming it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # BadGzipFile: not gzip; EOFError: truncated
        kind = "zlib.error" if isinstance(error, zlib.error) else type(error).__name__
        raise ValueError(f"{str(path)!r} is not a readable gzip file: it is truncated or corrupted ({kind}: "
                         f"{error}); download it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{str(path)!r} is truncated: header says {shape}, got {body.size} bytes of data")
    return body.reshape(shape)


def _find_idx(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / f"{stem}.gz", folder / stem, folder / "FashionMNIST" / "raw" / f"{stem}.gz",
                      folder / "FashionMNIST" / "raw" / stem):
        if candidate.is_file():
            return candidate
    return None


def _load_fashion_mnist(data_dir: Optional[Path], download: bool):
    folders = [data_dir] if data_dir is not None else [FASHION_MNIST_SYSTEM_DIR, Path("data")]
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for folder in folders:
        found = [_find_idx(folder, stem) for stem in stems]
        if all(found):
            break
    else:
        if not download:
            raise _not_found("Fashion-MNIST", [f / "train-images-idx3-ubyte.gz" for f in folders],
                             "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into "
                             f"{FASHION_MNIST_SYSTEM_DIR}), or pass --download (torchvision fetches it into "
                             "--data-dir), or point --data-dir at a folder holding the four IDX files.")
        from torchvision.datasets import FashionMNIST
        folder = folders[0]
        with _download_errors("Fashion-MNIST", folder):
            FashionMNIST(str(folder), train=True, download=True)
            FashionMNIST(str(folder), train=False, download=True)
        found = [_find_idx(folder, stem) for stem in stems]
    train_x, train_y, test_x, test_y = (torch.from_numpy(read_idx(p).copy()) for p in found)
    for images, labels, split, labels_file in ((train_x, train_y, "train", found[1]),
                                               (test_x, test_y, "t10k", found[3])):
        if images.dim() != 3 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"Fashion-MNIST {split} files disagree: images {tuple(images.shape)}, "
                             f"labels {tuple(labels.shape)}")
        _check_labels(labels, DATASET_INFO["fashion-mnist"].num_classes, labels_file)
    return train_x[:, None], train_y.long(), test_x[:, None], test_y.long()


# ----------------------------------------------------------------------------------------------------------------
# CIFAR (torchvision's python batches)

def _load_cifar(name: str, data_dir: Optional[Path], download: bool):
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    root = data_dir if data_dir is not None else Path("data")
    try:
        with _download_errors(name.upper(), root, active=download):
            train, test = (cls(str(root), train=True, download=download),
                           cls(str(root), train=False, download=download))
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise _not_found(name.upper(), [root / cls.base_folder],
                         "Pass --download to fetch it with torchvision, or point --data-dir at the folder that "
                         f"holds {cls.base_folder}/ (the standard python version).") from error

    def to_tensors(ds):
        labels = torch.tensor(ds.targets, dtype=torch.long)
        _check_labels(labels, len(ds.classes), root / cls.base_folder)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), labels

    return (*to_tensors(train), *to_tensors(test), list(train.classes))


# ----------------------------------------------------------------------------------------------------------------
# On-disk image trees (Tiny-ImageNet, ImageFolder)

class ImageFiles(torch.utils.data.Dataset):
    """(path, label) list decoded to uint8 [C, H, W] RGB tensors of one size (resize + centre crop if needed)."""

    def __init__(self, samples: Sequence, image_size: int):
        self.samples = list(samples)
        self.image_size = image_size

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        from PIL import Image
        from torchvision.transforms import functional as TF
        path, label = self.samples[index]
        with Image.open(path) as image:
            image = image.convert("RGB")  # Tiny-ImageNet holds some greyscale JPEGs
            if image.size != (self.image_size, self.image_size):
                image = TF.center_crop(TF.resize(image, self.image_size), self.image_size)
            return TF.pil_to_tensor(image), label


def _file_split(samples, image_size) -> ImageSplit:
    labels = torch.tensor([label for _, label in samples], dtype=torch.long)
    return ImageSplit(labels, dataset=ImageFiles(samples, image_size), indices=torch.arange(len(samples)))


def _load_tiny_imagenet(data_dir: Optional[Path]):
    candidates = [data_dir, data_dir / "tiny-imagenet-200"] if data_dir is not None else \
        [Path("data") / "tiny-imagenet-200", Path("tiny-imagenet-200")]
    root = next((c for c in candidates
                 if (c / "wnids.txt").is_file() and (c / "val" / "val_annotations.txt").is_file()), None)
    if root is None:
        raise _not_found("Tiny-ImageNet", [c / "wnids.txt" for c in candidates],
                         "Download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it and pass "
                         "--data-dir pointing at tiny-imagenet-200/ (or its parent).")
    wnids = sorted(line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise _not_found("Tiny-ImageNet", [folder], "The train/<wnid>/images folders are incomplete.")
        train += [(str(p), index[wnid]) for p in sorted(folder.iterdir()) if p.suffix.lower() in (".jpeg", ".jpg",
                                                                                                   ".png")]
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            if parts[1] not in index:
                raise ValueError(f"val_annotations.txt names class {parts[1]!r}, which is not in wnids.txt")
            test.append((str(root / "val" / "images" / parts[0]), index[parts[1]]))
    return train, test, wnids


def _load_image_folder(data_dir: Optional[Path]):
    from torchvision.datasets import ImageFolder
    if data_dir is None or not (data_dir / "train").is_dir():
        raise _not_found("ImageFolder data", [(data_dir or Path("<--data-dir>")) / "train"],
                         "Pass --data-dir holding train/<class>/*.png|jpg and test/<class>/* (or val/<class>/*).")
    test_dir = next((data_dir / d for d in ("test", "val") if (data_dir / d).is_dir()), None)
    if test_dir is None:
        raise _not_found("ImageFolder test split", [data_dir / "test", data_dir / "val"],
                         "Add a test/ (or val/) folder with the same class sub-folders as train/.")
    train, test = ImageFolder(str(data_dir / "train")), ImageFolder(str(test_dir))
    if train.classes != test.classes:
        raise ValueError(f"{test_dir} has classes {test.classes}, train/ has {train.classes}")
    return train.samples, test.samples, train.classes


# ----------------------------------------------------------------------------------------------------------------

def load_dataset(name: str, *, data_dir=None, download: bool = False, val_size: Optional[int] = None,
                 split_seed: int = 1, image_size: int = 64) -> DatasetSplits:
    """Load ``name`` (one of :data:`DATASET_NAMES`) as train / validation / test splits (Appendix D).

    ``val_size``: validation images held out of train (per class for Tiny-ImageNet); default 5,000 (50 per class).
    ``split_seed`` seeds the hold-out (the released code uses a fixed seed too), independent of the training seed.
    """
    if name not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    info = DATASET_INFO[name]
    data_dir = Path(os.path.expanduser(str(data_dir))) if data_dir is not None else None
    if data_dir is not None and not data_dir.exists() and not download:
        raise DatasetNotFoundError(f"--data-dir {str(data_dir)!r} does not exist")
    val_size = info.default_val_size if val_size is None else val_size
    class_names: list = []
    if name != "fashion-mnist" or download:  # reading the IDX files needs nothing more
        require_extra("torchvision", "vision", f"--dataset {name}" + (" --download" if download else ""))
    if name in ("cifar10", "cifar100", "fashion-mnist"):
        if name == "fashion-mnist":
            train_x, train_y, test_x, test_y = _load_fashion_mnist(data_dir, download)
        else:
            train_x, train_y, test_x, test_y, class_names = _load_cifar(name, data_dir, download)
        full_train = ImageSplit(train_y, images=train_x)
        test = ImageSplit(test_y, images=test_x)
        num_classes, size = info.num_classes, int(train_x.shape[-1])
        per_class = False
    else:
        if name == "tiny-imagenet":
            train_samples, test_samples, class_names = _load_tiny_imagenet(data_dir)
            size, per_class = 64, True
        else:
            train_samples, test_samples, class_names = _load_image_folder(data_dir)
            size, per_class = image_size, False
        full_train, test = _file_split(train_samples, size), _file_split(test_samples, size)
        num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"{name} needs at least 2 classes, found {num_classes}")
    train_rows, val_rows = _holdout(full_train.labels, val_size, split_seed, per_class)
    return DatasetSplits(name, full_train.subset(train_rows), full_train.subset(val_rows), test, num_classes,
                         info.in_channels, size, info.mean, info.std, list(class_names))
