"""Image datasets as in-memory tensors, batched by index permutation.

Two sources, both returned as an :class:`ImageDataset` of float32 pixels in ``[0, 1]`` with shape
``(N, 1, H, W)`` and int64 labels:

- ``mnist``: the standard IDX files of LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied
  to document recognition", read from a local directory (``data_dir``, the CLI's ``--data-dir``, or the
  environment variable ``KLDIV_DATA``). 60000 training and 10000 test images of 28x28 pixels. kldiv never
  downloads anything.
- ``digits``: scikit-learn's ``load_digits`` (1797 images of 8x8 pixels with values 0..16), the test part of the
  UCI "Optical Recognition of Handwritten Digits" dataset (Alpaydin & Kaynak 1998). It ships with scikit-learn,
  so everything runs with no download.

The IDX format: a 4-byte magic number ``0x00 0x00 <type code> <number of dims>``, then one big-endian int32 per
dimension, then the values in C order. MNIST uses type code ``0x08`` (unsigned byte): magic ``0x00000803``
(2051) for the images ``(N, 28, 28)`` and ``0x00000801`` (2049) for the labels ``(N,)``.

Batches are index tensors (:func:`batches`), so a training step is ``x = data.train[idx]``: no per-item Python
work, and the same permutation can be sharded across distributed ranks.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = [
    "DATASETS",
    "IMAGE_SHAPES",
    "ImageDataset",
    "batches",
    "binarize",
    "default_data_dir",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "read_idx",
    "shard",
]

DATASETS = ("mnist", "digits")
IMAGE_SHAPES = {"mnist": (1, 28, 28), "digits": (1, 8, 8)}
"""The shape ``(1, H, W)`` of one image of each dataset."""
"""The names :func:`load_dataset` accepts."""

ENV_VAR = "KLDIV_DATA"
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_IMAGE_SIZE = (28, 28)
DIGITS_SPLIT_SEED = 0
"""Seed of the fixed permutation that picks the digits test set (independent of ``seed``)."""

_IDX_TYPES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"
_SUMS_FILE = "SHA256SUMS"
_HINT = f"pass --data-dir (data_dir=...) or set the environment variable {ENV_VAR}"


@dataclass(frozen=True, repr=False, eq=False)
class ImageDataset:
    """Images ``(N, 1, H, W)`` float32 in ``[0, 1]`` and int64 labels ``(N,)`` for train, validation and test.

    ``val`` may be empty (``M = 0``). The repr summarizes sizes; equality is identity (tensors have no
    boolean ``==``).
    """

    name: str
    train: Tensor
    train_labels: Tensor
    val: Tensor
    val_labels: Tensor
    test: Tensor
    test_labels: Tensor

    def __post_init__(self) -> None:
        shape = self.train.shape[1:]
        for part in ("train", "val", "test"):
            x: Tensor = getattr(self, part)
            y: Tensor = getattr(self, f"{part}_labels")
            if x.dim() != 4 or x.shape[1] != 1:
                raise ValueError(
                    f"ImageDataset {self.name!r}: {part} must have shape (N, 1, H, W), got {tuple(x.shape)}"
                )
            if x.shape[1:] != shape:
                raise ValueError(
                    f"ImageDataset {self.name!r}: {part} images have shape {tuple(x.shape[1:])}, "
                    f"train images {tuple(shape)}"
                )
            if y.dim() != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"ImageDataset {self.name!r}: {part}_labels must have shape ({x.shape[0]},) to match "
                    f"{part}, got {tuple(y.shape)}"
                )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(1, H, W)``: the shape of one image."""
        _, c, h, w = self.train.shape
        return (c, h, w)

    @property
    def pixels(self) -> int:
        """``H * W``: the number of pixels of one image (784 for MNIST, 64 for digits)."""
        _, h, w = self.image_shape
        return h * w

    def fingerprint(self, *, labels: bool = False) -> str:
        """What the training set is, to tell at a resume that it is the same: its size and the SHA-256 of its
        images (and, with ``labels``, of its labels)."""
        digest = hashlib.sha256(self.train.contiguous().numpy().tobytes())
        if labels:
            digest.update(self.train_labels.contiguous().numpy().tobytes())
        kind = "labelled images" if labels else "images"
        return f"{self.train.shape[0]} {kind}, sha256 {digest.hexdigest()[:16]}"

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, image_shape={self.image_shape}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )


# ----------------------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, *, low: int, high: int | None = None, high_text: str = "") -> int:
    """``value`` as an int with ``low <= value`` (and ``value < high``), or an error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low or (high is not None and value >= high):
        bound = f"{low} <= {name}" + (f" < {high_text or high}" if high is not None else "")
        raise ValueError(f"{name} must satisfy {bound}, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------------------
# IDX files
# ----------------------------------------------------------------------------------------------------------------
def default_data_dir() -> Path | None:
    """The directory named by the environment variable ``KLDIV_DATA``, or ``None`` when it is unset or empty."""
    value = os.environ.get(ENV_VAR, "")
    return Path(value).expanduser() if value else None


def _decompress(stored: bytes, path: Path) -> bytes:
    """The IDX bytes of a file as stored: gunzipped when it starts with the gzip magic, else as is."""
    if not stored.startswith(_GZIP_MAGIC):
        return stored
    try:
        return gzip.decompress(stored)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt gzip data ({err}); the file is truncated or damaged") from err


def _parse_idx(data: bytes, path: Path, compressed: bool) -> Tensor:
    """Check an IDX header against ``data`` and return its uint8 values as a tensor of the header's shape."""
    what = "decompressed size" if compressed else "size"
    if len(data) < 4:
        raise ValueError(f"{path}: {what} is {len(data)} bytes, too short for an IDX header (4 bytes of magic)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: bad magic number 0x{magic:08X}: not an IDX file (expected 0x0000 followed by a type code "
            "and a dimension count, e.g. 0x00000803 for MNIST images, 0x00000801 for labels)"
        )
    if type_code != 0x08:
        known = _IDX_TYPES.get(type_code)
        found = f"{known} (0x{type_code:02X})" if known else f"unknown type code 0x{type_code:02X}"
        raise ValueError(f"{path}: IDX type code is {found}, expected 0x08 (uint8); magic 0x{magic:08X}")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions (magic 0x{magic:08X}), expected at least 1")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"{path}: {what} is {len(data)} bytes, shorter than the {header}-byte header of {ndim} dims: "
            "the file is truncated"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = header + math.prod(dims)
    if len(data) != expected:
        problem = "truncated or corrupt" if len(data) < expected else "corrupt (trailing bytes)"
        raise ValueError(
            f"{path}: {what} is {len(data)} bytes but the header (shape {dims}) implies {expected} bytes: "
            f"the file is {problem}"
        )
    values = np.frombuffer(data, dtype=np.uint8, count=expected - header, offset=header).reshape(dims)
    return torch.from_numpy(values.copy())


def read_idx(path: str | Path) -> Tensor:
    """Read one IDX file (gzipped or raw, detected from its content) as a uint8 tensor of the header's shape.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file for a bad magic
    number, a type code other than 0x08 (uint8), or a size that differs from the header's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    stored = path.read_bytes()
    return _parse_idx(_decompress(stored, path), path, compressed=stored.startswith(_GZIP_MAGIC))


def _read_sums(path: Path) -> dict[str, str]:
    """``{file name: sha256 hex}`` from a ``sha256sum``-style file (``<hex>  <name>`` or ``<hex> *<name>``)."""
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}, line {number}: expected '<64 hex digits>  <file name>', got {line!r}")
        sums[Path(parts[1].lstrip("*")).name] = digest
    return sums


def _find_mnist_file(directory: Path, stem: str) -> Path:
    """``<stem>.gz`` if it exists, else the raw ``<stem>``; a ``FileNotFoundError`` listing both if neither."""
    candidates = [directory / f"{stem}.gz", directory / stem]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = " or ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"MNIST file missing: looked for {looked}; {_HINT} to point at the MNIST IDX files")


def _read_mnist_file(path: Path, ndim: int, sums: dict[str, str]) -> Tensor:
    """Read one MNIST IDX file, verify it against ``sums`` when listed there, and check its magic number."""
    stored = path.read_bytes()
    expected_digest = sums.get(path.name)
    if expected_digest is not None:
        found = hashlib.sha256(stored).hexdigest()
        if found != expected_digest:
            raise ValueError(
                f"{path}: SHA-256 {found} does not match {expected_digest} listed in "
                f"{path.parent / _SUMS_FILE}: the file is corrupt or not the original"
            )
    values = _parse_idx(_decompress(stored, path), path, compressed=stored.startswith(_GZIP_MAGIC))
    if values.dim() != ndim:
        kind = "images" if ndim == 3 else "labels"
        raise ValueError(
            f"{path}: bad magic number 0x{0x0800 | values.dim():08X} ({values.dim()} dims), expected "
            f"0x{0x0800 | ndim:08X} for MNIST {kind} ({ndim} dims)"
        )
    return values


def _split(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, val): the last ``val_size`` of a permutation seeded by ``seed``, each in ascending order."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[: n - val_size].sort().values, order[n - val_size :].sort().values


def load_mnist(data_dir: str | Path | None = None, *, val_size: int = 0, seed: int = 0) -> ImageDataset:
    """MNIST from the four IDX files in ``data_dir`` (default :func:`default_data_dir`), ``.gz`` or raw.

    ``.gz`` is preferred when both forms exist. If ``data_dir`` holds a ``SHA256SUMS`` file, every file used
    that is listed there is verified. Pixels are ``uint8 / 255`` as float32, shape ``(N, 1, 28, 28)``. The
    validation set is the last ``val_size`` of a permutation of the 60000 training images seeded by ``seed``;
    train and validation keep the files' order. Raises ``ValueError`` if no directory is given (kldiv never
    downloads), ``FileNotFoundError`` for a missing directory or file, ``ValueError`` naming the file for
    corrupt contents.
    """
    if data_dir is None:
        data_dir = default_data_dir()
        if data_dir is None:
            raise ValueError(f"no MNIST directory given: {_HINT} (kldiv does not download datasets)")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"MNIST directory not found: {directory}; {_HINT}")
    seed = _check_int("seed", seed, low=0)
    sums_path = directory / _SUMS_FILE
    sums = _read_sums(sums_path) if sums_path.is_file() else {}

    parts: dict[str, Tensor] = {}
    paths: dict[str, Path] = {}
    for key, stem in MNIST_FILES.items():
        path = paths[key] = _find_mnist_file(directory, stem)
        values = parts[key] = _read_mnist_file(path, 3 if key.endswith("images") else 1, sums)
        if key.endswith("images") and tuple(values.shape[1:]) != MNIST_IMAGE_SIZE:
            raise ValueError(f"{path}: images are {tuple(values.shape[1:])} pixels, expected {MNIST_IMAGE_SIZE}")
        if key.endswith("labels") and values.numel() and int(values.max()) > 9:
            raise ValueError(f"{path}: label {int(values.max())} found, MNIST labels are 0..9")
    for split in ("train", "test"):
        n_images, n_labels = len(parts[f"{split}_images"]), len(parts[f"{split}_labels"])
        if n_images != n_labels:
            raise ValueError(
                f"{paths[f'{split}_images']} has {n_images} images but {paths[f'{split}_labels']} has "
                f"{n_labels} labels: the counts must agree"
            )

    n = len(parts["train_images"])
    val_size = _check_int("val_size", val_size, low=0, high=n, high_text=f"{n} (the number of training images)")
    train_idx, val_idx = _split(n, val_size, seed)
    images = parts["train_images"].unsqueeze(1).to(torch.float32).div_(255)
    labels = parts["train_labels"].to(torch.int64)
    return ImageDataset(
        name="mnist",
        train=images[train_idx] if val_size else images,
        train_labels=labels[train_idx] if val_size else labels,
        val=images[val_idx],
        val_labels=labels[val_idx],
        test=parts["test_images"].unsqueeze(1).to(torch.float32).div_(255),
        test_labels=parts["test_labels"].to(torch.int64),
    )


# ----------------------------------------------------------------------------------------------------------------
# scikit-learn's digits
# ----------------------------------------------------------------------------------------------------------------
def _digits_arrays() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The digits' pixels ``(1797, 64)`` and labels, read from the CSV that scikit-learn ships (64 pixel columns and
    the label per row) without importing scikit-learn, which takes seconds; through scikit-learn's own loader when
    the file is not where this version keeps it."""
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0], "datasets", "data", "digits.csv.gz") if locations else None
    if path is not None and path.is_file():
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        return np.ascontiguousarray(table[:, :-1]), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sklearn_load_digits

    bunch = sklearn_load_digits()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def load_digits(*, val_size: int = 0, seed: int = 0, test_size: int = 297) -> ImageDataset:
    """scikit-learn's 8x8 digits (1797 images, values 0..16) as float32 ``/ 16``, shape ``(N, 1, 8, 8)``.

    The test set is the last ``test_size`` images of a permutation with the fixed seed ``DIGITS_SPLIT_SEED``, so
    it never depends on ``seed``; the validation set is the last ``val_size`` of the remaining images under a
    permutation seeded by ``seed``. Each split keeps scikit-learn's order. The default leaves 1500 images for
    training and validation.
    """
    pixels, targets = _digits_arrays()
    images = torch.from_numpy(pixels.reshape(-1, 8, 8)).unsqueeze(1).div_(16)
    labels = torch.from_numpy(targets)
    n = len(labels)
    test_size = _check_int("test_size", test_size, low=0, high=n, high_text=f"{n} (the number of digits images)")
    seed = _check_int("seed", seed, low=0)
    rest = n - test_size
    val_size = _check_int("val_size", val_size, low=0, high=rest, high_text=f"{rest} (images left after the test set)")

    fixed = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    test_idx = fixed[rest:].sort().values
    rest_idx = fixed[:rest].sort().values
    train_pos, val_pos = _split(rest, val_size, seed)
    train_idx, val_idx = rest_idx[train_pos], rest_idx[val_pos]
    return ImageDataset(
        name="digits",
        train=images[train_idx],
        train_labels=labels[train_idx],
        val=images[val_idx],
        val_labels=labels[val_idx],
        test=images[test_idx],
        test_labels=labels[test_idx],
    )


def load_dataset(name: str, data_dir: str | Path | None = None, *, val_size: int = 0, seed: int = 0) -> ImageDataset:
    """``load_mnist(data_dir, ...)`` for ``"mnist"``, ``load_digits(...)`` for ``"digits"`` (``data_dir`` unused)."""
    if name == "mnist":
        return load_mnist(data_dir, val_size=val_size, seed=seed)
    if name == "digits":
        return load_digits(val_size=val_size, seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(repr(d) for d in DATASETS)}")


# ----------------------------------------------------------------------------------------------------------------
# batching and binarization
# ----------------------------------------------------------------------------------------------------------------
def batches(
    n: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Tensor]:
    """Yield int64 index tensors into a dataset of ``n`` items: this rank's shard of each global batch.

    The order is ``torch.randperm(n, generator=generator)`` when ``shuffle`` (the global RNG if ``generator`` is
    None), else ``arange(n)``; consecutive runs of ``batch_size`` indices form the global batches. With
    ``world_size`` ranks, rank ``r`` gets the contiguous slice ``[r * b, (r + 1) * b)`` of each global batch,
    ``b = batch_size // world_size`` (``batch_size`` must be divisible by ``world_size``), so with equal shards
    the mean over ranks of the per-rank mean gradients is the single-process mean gradient on the same global
    batch. Every rank must pass a generator in the same state to see the same permutation.

    The last global batch, of ``m < batch_size`` indices, is dropped when ``drop_last``; otherwise it is split
    as evenly as possible in rank order (the first ``m % world_size`` ranks get one index more). If
    ``m < world_size``, ranks ``m`` and above get an *empty* tensor: every rank yields the same number of
    batches (so collectives such as DDP's all-reduce stay matched), but a mean over an empty shard is NaN and
    unequal shards make the average of per-rank means differ from the global mean; weight each rank's loss by
    its shard size (or drop the last batch) where that matters. ``n = 0`` yields nothing.
    """
    n = _check_int("n", n, low=0)
    batch_size = _check_int("batch_size", batch_size, low=1)
    world_size = _check_int("world_size", world_size, low=1)
    rank = _check_int("rank", rank, low=0, high=world_size, high_text=f"world_size = {world_size}")
    if batch_size % world_size:
        raise ValueError(
            f"batch_size must be divisible by world_size, got batch_size = {batch_size} and world_size = "
            f"{world_size} (remainder {batch_size % world_size})"
        )
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return _shards(order, batch_size, drop_last=drop_last, rank=rank, world_size=world_size)


def shard(size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a global batch of ``size`` entries: sizes as even as possible, the
    first ``size % world_size`` ranks one larger (the rule of :func:`batches`)."""
    base, extra = divmod(size, world_size)
    first = rank * base + min(rank, extra)
    return slice(first, first + base + (rank < extra))


def _shards(order: Tensor, batch_size: int, *, drop_last: bool, rank: int, world_size: int) -> Iterator[Tensor]:
    """Rank ``rank``'s contiguous slice of each run of ``batch_size`` entries of ``order`` (see :func:`batches`)."""
    n = len(order)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size][shard(min(batch_size, n - start), rank, world_size)]


def binarize(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Dynamic binarization: independent ``Bernoulli(x)`` draws, same shape and dtype as ``x``.

    ``x`` must be a floating tensor with values in ``[0, 1]`` (a ``ValueError`` gives the min and max found).
    Drawing afresh each epoch (Salakhutdinov & Murray 2008) is the usual binarized-MNIST protocol for VAEs.
    """
    if not x.is_floating_point():
        raise TypeError(f"binarize: x must be a floating tensor of probabilities in [0, 1], got dtype {x.dtype}")
    if x.numel():
        low, high = (float(v) for v in torch.aminmax(x))
        if not (low >= 0.0 and high <= 1.0):
            nan = " (x contains NaN)" if math.isnan(low) or math.isnan(high) else ""
            raise ValueError(f"binarize: x must be in [0, 1], found min {low} and max {high}{nan}")
    return torch.bernoulli(x, generator=generator)
