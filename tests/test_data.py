"""kldiv.data: IDX parsing and its errors, MNIST and digits loaders, index batching with sharding, binarization."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from kldiv.data import (
    MNIST_FILES,
    ImageDataset,
    batches,
    binarize,
    default_data_dir,
    load_dataset,
    load_digits,
    load_mnist,
    read_idx,
)

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
# Known class counts of MNIST (LeCun et al. 1998): the 10000 test and 60000 training labels.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
N_TRAIN, N_TEST = 12, 5  # sizes of the synthetic MNIST


# ----------------------------------------------------------------------------------------------------------------
# helpers: synthetic IDX files
# ----------------------------------------------------------------------------------------------------------------
def idx_bytes(values: np.ndarray, *, type_code: int = 0x08, magic: bytes | None = None) -> bytes:
    """An IDX file holding ``values`` (as uint8 bytes), with an optional wrong type code or magic."""
    header = magic if magic is not None else bytes([0, 0, type_code, values.ndim])
    dims = np.asarray(values.shape, dtype=">i4").tobytes()
    return header + dims + np.ascontiguousarray(values, dtype=np.uint8).tobytes()


def write(path: Path, data: bytes, *, gz: bool) -> Path:
    """Write ``data`` to ``path`` (plus ``.gz``, gzipped, when ``gz``); return the path written."""
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def synthetic_mnist(n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    """Random 28x28 uint8 images whose pixel (0, 0) is the item's index, and labels ``index % 10``."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n)
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (np.arange(n) % 10).astype(np.uint8)
    return arrays


def write_mnist(directory: Path, arrays: dict[str, np.ndarray], *, gz: bool | dict[str, bool]) -> dict[str, Path]:
    """Write the four MNIST files into ``directory``; ``gz`` per file or for all."""
    paths = {}
    for key, stem in MNIST_FILES.items():
        compress = gz[key] if isinstance(gz, dict) else gz
        paths[key] = write(directory / stem, idx_bytes(arrays[key]), gz=compress)
    return paths


def write_sums(directory: Path, paths: list[Path]) -> Path:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in paths]
    sums = directory / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


@pytest.fixture
def mnist_arrays() -> dict[str, np.ndarray]:
    return synthetic_mnist()


@pytest.fixture
def mnist_dir(tmp_path: Path, mnist_arrays: dict[str, np.ndarray]) -> Path:
    write_mnist(tmp_path, mnist_arrays, gz=True)
    return tmp_path


# ----------------------------------------------------------------------------------------------------------------
# read_idx
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (4, 2, 3)])
def test_read_idx_returns_exact_values_and_shape(tmp_path: Path, gz: bool, shape: tuple[int, ...]) -> None:
    values = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = write(tmp_path / "x-idx", idx_bytes(values), gz=gz)
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert tuple(out.shape) == shape
    assert np.array_equal(out.numpy(), values)
    assert torch.equal(read_idx(str(path)), out)  # str paths too


def test_read_idx_detects_gzip_from_content_not_name(tmp_path: Path) -> None:
    values = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(idx_bytes(values)))
    assert np.array_equal(read_idx(path).numpy(), values)


def test_read_idx_result_is_writable_and_owns_its_memory(tmp_path: Path) -> None:
    path = write(tmp_path / "x", idx_bytes(np.zeros(4, dtype=np.uint8)), gz=False)
    out = read_idx(path)
    out += 1  # a tensor over a read-only buffer would warn or fail here
    assert out.tolist() == [1, 1, 1, 1]


def _raises_naming(path: Path, error: type[Exception], *words: str) -> pytest.ExceptionInfo[Exception]:
    with pytest.raises(error) as info:
        read_idx(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert re.search(word, message, re.IGNORECASE), (word, message)
    return info


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_bad_magic(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros(3, dtype=np.uint8), magic=b"\x12\x34\x08\x01")
    _raises_naming(write(tmp_path / "bad", data, gz=gz), ValueError, "bad magic", "0x12340801")


@pytest.mark.parametrize(("code", "name"), [(0x0D, "float32"), (0x09, "int8"), (0x42, "unknown")])
def test_read_idx_wrong_type_code(tmp_path: Path, code: int, name: str) -> None:
    data = idx_bytes(np.zeros(3, dtype=np.uint8), type_code=code)
    _raises_naming(write(tmp_path / "typed", data, gz=False), ValueError, "type code", name, r"0x08 \(uint8\)")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_truncated_payload(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(np.zeros((4, 5), dtype=np.uint8))[:-1]
    words = ["truncated", r"\b31 bytes", r"implies 32 bytes"] + (["decompressed"] if gz else [])
    _raises_naming(write(tmp_path / "short", data, gz=gz), ValueError, *words)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 5), dtype=np.uint8)) + b"\x00"
    _raises_naming(write(tmp_path / "long", data, gz=False), ValueError, "trailing", r"\b33 bytes", r"implies 32 bytes")


def test_read_idx_truncated_header(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 5, 6), dtype=np.uint8))[:10]  # 3 dims need a 16-byte header
    _raises_naming(write(tmp_path / "head", data, gz=False), ValueError, "truncated", "16-byte header")
    _raises_naming(write(tmp_path / "tiny", b"\x00\x00", gz=False), ValueError, "too short")


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(packed[: len(packed) // 2])
    _raises_naming(path, ValueError, "corrupt gzip")


def test_read_idx_missing_file(tmp_path: Path) -> None:
    _raises_naming(tmp_path / "absent", FileNotFoundError, "not found")


# ----------------------------------------------------------------------------------------------------------------
# load_mnist on synthetic files
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gz", [False, True, {"train_images": True, "train_labels": False, "test_images": False, "test_labels": True}]
)
def test_load_mnist_contents_exact(tmp_path: Path, mnist_arrays: dict[str, np.ndarray], gz: bool) -> None:
    write_mnist(tmp_path, mnist_arrays, gz=gz)
    data = load_mnist(tmp_path)
    assert data.name == "mnist"
    assert data.image_shape == (1, 28, 28)
    assert data.pixels == 784
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = getattr(data, split), getattr(data, f"{split}_labels")
        assert images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert tuple(images.shape) == (n, 1, 28, 28)
        expected = torch.from_numpy(mnist_arrays[f"{split}_images"]).to(torch.float32).unsqueeze(1) / 255
        assert torch.equal(images, expected)
        assert labels.tolist() == mnist_arrays[f"{split}_labels"].tolist()
    assert tuple(data.val.shape) == (0, 1, 28, 28)
    assert tuple(data.val_labels.shape) == (0,)


def test_load_mnist_prefers_gz_when_both_exist(tmp_path: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    write_mnist(tmp_path, mnist_arrays, gz=True)
    other = {k: (v + 1 if k.endswith("images") else v) for k, v in mnist_arrays.items()}
    write_mnist(tmp_path, other, gz=False)
    data = load_mnist(tmp_path)
    assert torch.equal(data.test[:, 0], torch.from_numpy(mnist_arrays["test_images"]).float() / 255)


@pytest.mark.parametrize("key", list(MNIST_FILES))
def test_load_mnist_missing_file_lists_candidates_and_hint(mnist_dir: Path, key: str) -> None:
    stem = MNIST_FILES[key]
    (mnist_dir / f"{stem}.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(mnist_dir)
    message = str(info.value)
    assert str(mnist_dir / f"{stem}.gz") in message
    assert f"or {mnist_dir / stem};" in message  # the raw name was looked for too
    assert "--data-dir" in message
    assert "KLDIV_DATA" in message


def test_load_mnist_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere"))):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_mnist_count_mismatch_names_both_files(
    tmp_path: Path, mnist_arrays: dict[str, np.ndarray], split: str
) -> None:
    mnist_arrays[f"{split}_labels"] = mnist_arrays[f"{split}_labels"][:-1]
    write_mnist(tmp_path, mnist_arrays, gz=True)
    n = len(mnist_arrays[f"{split}_images"])
    message = (
        rf"{MNIST_FILES[f'{split}_images']}\.gz has {n} images but .*{MNIST_FILES[f'{split}_labels']}\.gz has {n - 1}"
    )
    with pytest.raises(ValueError, match=message):
        load_mnist(tmp_path)


def test_load_mnist_unexpected_image_size(tmp_path: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    mnist_arrays["test_images"] = mnist_arrays["test_images"][:, :27, :]
    write_mnist(tmp_path, mnist_arrays, gz=False)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: images are \(27, 28\) pixels, expected \(28, 28\)"):
        load_mnist(tmp_path)


def test_load_mnist_swapped_files_give_bad_magic(tmp_path: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    paths = write_mnist(tmp_path, mnist_arrays, gz=False)
    shutil.copy(paths["train_labels"], paths["train_images"])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: bad magic number 0x00000801.*0x00000803"):
        load_mnist(tmp_path)


def test_load_mnist_label_out_of_range(tmp_path: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    mnist_arrays["train_labels"][3] = 10
    write_mnist(tmp_path, mnist_arrays, gz=True)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: label 10 found"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_load_mnist_corrupt_file_is_named(tmp_path: Path, mnist_arrays: dict[str, np.ndarray], gz: bool) -> None:
    paths = write_mnist(tmp_path, mnist_arrays, gz=False)
    write(paths["test_images"], idx_bytes(mnist_arrays["test_images"])[:-5], gz=False)
    if gz:  # the same corruption, stored gzipped
        for path in paths.values():
            write(path, path.read_bytes(), gz=True)
            path.unlink()
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte(\.gz)?: .*truncated"):
        load_mnist(tmp_path)


def test_load_mnist_sha256sums_verified(mnist_dir: Path) -> None:
    paths = sorted(mnist_dir.glob("*.gz"))
    write_sums(mnist_dir, paths)
    load_mnist(mnist_dir)  # every file matches
    target = mnist_dir / "train-labels-idx1-ubyte.gz"
    lines = (mnist_dir / "SHA256SUMS").read_text().splitlines()
    bad = [("0" * 64 + "  " + target.name) if line.endswith(target.name) else line for line in lines]
    (mnist_dir / "SHA256SUMS").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: SHA-256 [0-9a-f]{64} does not match 0{64}"):
        load_mnist(mnist_dir)


def test_load_mnist_sha256sums_detects_changed_file(mnist_dir: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    write_sums(mnist_dir, sorted(mnist_dir.glob("*.gz")))
    changed = mnist_arrays["test_images"].copy()
    changed[0, 5, 5] ^= 1  # still a valid IDX file: only the checksum can tell
    write(mnist_dir / "t10k-images-idx3-ubyte", idx_bytes(changed), gz=True)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: SHA-256 .* listed in .*SHA256SUMS"):
        load_mnist(mnist_dir)


def test_load_mnist_sha256sums_binary_marker_and_unlisted_files(mnist_dir: Path) -> None:
    path = mnist_dir / "t10k-labels-idx1-ubyte.gz"
    (mnist_dir / "SHA256SUMS").write_text(f"# comment\n\n{'f' * 64} *{path.name}\n")  # `sha256sum -b` style
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: SHA-256"):
        load_mnist(mnist_dir)
    (mnist_dir / "SHA256SUMS").write_text(f"{'f' * 64}  other-file.gz\n")  # unlisted files are not checked
    assert len(load_mnist(mnist_dir).test) == N_TEST


def test_load_mnist_malformed_sha256sums(mnist_dir: Path) -> None:
    (mnist_dir / "SHA256SUMS").write_text("not-a-hash  train-images-idx3-ubyte.gz\n")
    with pytest.raises(ValueError, match=r"SHA256SUMS, line 1: expected '<64 hex digits>"):
        load_mnist(mnist_dir)


def test_load_mnist_without_directory_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KLDIV_DATA", raising=False)
    assert default_data_dir() is None
    with pytest.raises(ValueError, match=r"--data-dir.*KLDIV_DATA"):
        load_mnist()
    with pytest.raises(ValueError, match=r"--data-dir.*KLDIV_DATA"):
        load_dataset("mnist")


def test_load_mnist_reads_kldiv_data(monkeypatch: pytest.MonkeyPatch, mnist_dir: Path) -> None:
    monkeypatch.setenv("KLDIV_DATA", str(mnist_dir))
    assert default_data_dir() == mnist_dir
    assert len(load_mnist().train) == N_TRAIN
    monkeypatch.setenv("KLDIV_DATA", "")
    assert default_data_dir() is None


def test_load_mnist_validation_split(mnist_dir: Path, mnist_arrays: dict[str, np.ndarray]) -> None:
    data = load_mnist(mnist_dir, val_size=4, seed=3)
    assert (len(data.train), len(data.val)) == (N_TRAIN - 4, 4)
    # pixel (0, 0) is the original index: the split is a partition, each part in file order
    train_ids = (data.train[:, 0, 0, 0] * 255).round().long().tolist()
    val_ids = (data.val[:, 0, 0, 0] * 255).round().long().tolist()
    assert sorted(train_ids + val_ids) == list(range(N_TRAIN))
    assert train_ids == sorted(train_ids)
    assert val_ids == sorted(val_ids)
    assert data.val_labels.tolist() == [i % 10 for i in val_ids]
    assert torch.equal(data.val, load_mnist(mnist_dir, val_size=4, seed=3).val)  # deterministic
    others = {tuple((load_mnist(mnist_dir, val_size=4, seed=s).val[:, 0, 0, 0] * 255).round().long().tolist())
              for s in range(4, 8)}  # fmt: skip
    assert len(others | {tuple(val_ids)}) > 1  # the seed matters
    assert len(data.test) == N_TEST  # the test set is untouched


@pytest.mark.parametrize(("val_size", "error"), [(-1, ValueError), (N_TRAIN, ValueError), (True, TypeError)])
def test_load_mnist_val_size_checked(mnist_dir: Path, val_size: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"val_size.*{val_size!r}" if error is TypeError else rf"val_size.*{val_size}"):
        load_mnist(mnist_dir, val_size=val_size)


# ----------------------------------------------------------------------------------------------------------------
# the real MNIST
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_mnist() -> ImageDataset:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"MNIST not found at {REAL_MNIST}")
    return load_mnist(REAL_MNIST)


def test_real_mnist_shapes_range_and_class_counts(real_mnist: ImageDataset) -> None:
    assert tuple(real_mnist.train.shape) == (60000, 1, 28, 28)
    assert tuple(real_mnist.test.shape) == (10000, 1, 28, 28)
    assert real_mnist.train.dtype == real_mnist.test.dtype == torch.float32
    assert real_mnist.train_labels.dtype == real_mnist.test_labels.dtype == torch.int64
    for images in (real_mnist.train, real_mnist.test):
        assert float(images.min()) == 0.0
        assert float(images.max()) == 1.0
    assert torch.bincount(real_mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(real_mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert abs(float(real_mnist.train.mean()) - 0.1307) < 1e-4  # the well-known normalization constant


def test_real_mnist_validation_split_partitions_train() -> None:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"MNIST not found at {REAL_MNIST}")
    data = load_mnist(REAL_MNIST, val_size=5000, seed=1)
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    counts = torch.bincount(data.train_labels, minlength=10) + torch.bincount(data.val_labels, minlength=10)
    assert counts.tolist() == MNIST_TRAIN_COUNTS


def test_real_mnist_sha256sums_hold_and_are_checked(tmp_path: Path) -> None:
    if not REAL_MNIST.is_dir():
        pytest.skip(f"MNIST not found at {REAL_MNIST}")
    sums = REAL_MNIST / "SHA256SUMS"
    listed = {line.split()[1]: line.split()[0] for line in sums.read_text().splitlines() if line.strip()}
    assert set(listed) == {f"{stem}.gz" for stem in MNIST_FILES.values()}
    for name, digest in listed.items():
        assert hashlib.sha256((REAL_MNIST / name).read_bytes()).hexdigest() == digest
    # a copy with one digest changed must be refused by load_mnist
    for name in [*listed, "SHA256SUMS"]:
        shutil.copy(REAL_MNIST / name, tmp_path / name)
    victim = "t10k-labels-idx1-ubyte.gz"
    flipped = listed[victim][:-1] + ("0" if listed[victim][-1] != "0" else "1")
    (tmp_path / "SHA256SUMS").write_text(sums.read_text().replace(listed[victim], flipped))
    with pytest.raises(ValueError, match=rf"{re.escape(victim)}: SHA-256 {listed[victim]} does not match {flipped}"):
        load_mnist(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------------------------
def _rows(data: ImageDataset, *parts: str) -> list[bytes]:
    """Each item of ``parts`` as the bytes of (image, label): a multiset key for partition checks."""
    out = []
    for part in parts:
        images, labels = getattr(data, part), getattr(data, f"{part}_labels")
        out += [img.numpy().tobytes() + bytes([int(y)]) for img, y in zip(images, labels, strict=True)]
    return out


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits(val_size=200, seed=5)


def test_digits_shapes_and_range(digits: ImageDataset) -> None:
    assert digits.name == "digits"
    assert digits.image_shape == (1, 8, 8)
    assert digits.pixels == 64
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1797 - 297 - 200, 200, 297)
    for part in ("train", "val", "test"):
        x, y = getattr(digits, part), getattr(digits, f"{part}_labels")
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert float(x.min()) == 0.0
        assert float(x.max()) == 1.0
        assert torch.equal(x * 16, (x * 16).round())  # sklearn's 0..16 levels, divided by 16
        assert set(y.tolist()) == set(range(10))


def test_digits_split_is_a_partition_of_sklearn_digits(digits: ImageDataset) -> None:
    import sklearn.datasets

    bunch = sklearn.datasets.load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16).unsqueeze(1)
    everything = ImageDataset("all", images, torch.from_numpy(bunch.target), images[:0], images[:0, 0, 0, 0].long(),
                              images[:0], images[:0, 0, 0, 0].long())  # fmt: skip
    assert sorted(_rows(digits, "train", "val", "test")) == sorted(_rows(everything, "train"))


def test_digits_split_deterministic_and_test_set_fixed(digits: ImageDataset) -> None:
    again = load_digits(val_size=200, seed=5)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(again, part), getattr(digits, part))
        assert torch.equal(getattr(again, f"{part}_labels"), getattr(digits, f"{part}_labels"))
    other = load_digits(val_size=50, seed=6)
    assert torch.equal(other.test, digits.test)  # the test set depends on neither seed nor val_size
    assert torch.equal(other.test_labels, digits.test_labels)
    assert not torch.equal(load_digits(val_size=200, seed=6).val, digits.val)  # the seed picks the validation set
    assert len(load_digits().train) == 1500


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"test_size": 1797}, ValueError, r"test_size.*1797"),
        ({"test_size": -1}, ValueError, r"test_size.*-1"),
        ({"val_size": 1500}, ValueError, r"val_size .* 1500 \(images left after the test set\), got 1500"),
        ({"val_size": 2.0}, TypeError, r"val_size must be an int, got float"),
        ({"seed": -2}, ValueError, r"seed.*-2"),
    ],
)
def test_digits_arguments_checked(kwargs: dict[str, object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        load_digits(**kwargs)  # type: ignore[arg-type]


def test_load_dataset_dispatches_and_lists_choices(mnist_dir: Path) -> None:
    assert load_dataset("digits", val_size=10).name == "digits"
    assert len(load_dataset("digits", val_size=10).val) == 10
    assert len(load_dataset("mnist", mnist_dir, val_size=2).val) == 2
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'.*'mnist', 'digits'"):
        load_dataset("cifar")


def test_image_dataset_repr_and_shape_checks() -> None:
    x, y = torch.zeros(3, 1, 4, 5), torch.zeros(3, dtype=torch.int64)
    data = ImageDataset("toy", x, y, x[:0], y[:0], x[:2], y[:2])
    assert repr(data) == "ImageDataset(name='toy', image_shape=(1, 4, 5), train=3, val=0, test=2)"
    assert data.pixels == 20
    with pytest.raises(ValueError, match=r"test must have shape \(N, 1, H, W\), got \(2, 4, 5\)"):
        ImageDataset("toy", x, y, x[:0], y[:0], x[:2, 0], y[:2])
    with pytest.raises(ValueError, match=r"val images have shape \(1, 5, 4\), train images \(1, 4, 5\)"):
        ImageDataset("toy", x, y, torch.zeros(1, 1, 5, 4), y[:1], x, y)
    with pytest.raises(ValueError, match=r"train_labels must have shape \(3,\)"):
        ImageDataset("toy", x, y[:2], x[:0], y[:0], x, y)


# ----------------------------------------------------------------------------------------------------------------
# batches
# ----------------------------------------------------------------------------------------------------------------
def _all_ranks(n: int, batch_size: int, world_size: int, **kwargs: object) -> list[list[Tensor]]:
    """``out[r][j]``: rank r's shard of global batch j, each rank with its own generator in the same state."""
    return [
        list(batches(n, batch_size, generator=torch.Generator().manual_seed(7), rank=r, world_size=world_size,
                     **kwargs))  # type: ignore[arg-type]
        for r in range(world_size)
    ]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 300),
    per_rank=st.integers(1, 20),
    world_size=st.integers(1, 6),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
)
def test_batches_shards_cover_a_permutation_contiguously(
    n: int, per_rank: int, world_size: int, drop_last: bool, shuffle: bool
) -> None:
    batch_size = per_rank * world_size
    shards = _all_ranks(n, batch_size, world_size, drop_last=drop_last, shuffle=shuffle)
    single = _all_ranks(n, batch_size, 1, drop_last=drop_last, shuffle=shuffle)[0]
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    assert all(len(rank_batches) == n_batches for rank_batches in shards)  # ranks stay in step
    assert len(single) == n_batches
    for j, global_batch in enumerate(single):
        # rank r's shard is the r-th contiguous slice of the single-process batch, in rank order
        assert torch.equal(torch.cat([shards[r][j] for r in range(world_size)]), global_batch)
        sizes = [len(shards[r][j]) for r in range(world_size)]
        assert max(sizes) - min(sizes) <= 1
        assert sizes == sorted(sizes, reverse=True)
        if len(global_batch) == batch_size:
            assert sizes == [per_rank] * world_size
    everything = torch.cat([b for rank_batches in shards for b in rank_batches] + [torch.empty(0, dtype=torch.long)])
    assert everything.dtype == torch.int64
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7)) if shuffle else torch.arange(n)
    kept = n_batches * batch_size if drop_last else n
    assert sorted(everything.tolist()) == sorted(order[:kept].tolist())  # each kept index exactly once
    if not drop_last:
        assert sorted(everything.tolist()) == list(range(n))


def test_batches_shard_mean_gradients_average_to_the_global_mean_gradient() -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def grad(idx: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(((x[idx] @ w).sin() ** 2).mean(), w)
        return g

    world_size = 4
    shards = _all_ranks(64, 16, world_size)
    for j, global_batch in enumerate(_all_ranks(64, 16, 1)[0]):
        averaged = torch.stack([grad(shards[r][j]) for r in range(world_size)]).mean(0)
        torch.testing.assert_close(averaged, grad(global_batch), rtol=1e-12, atol=1e-12)


def test_batches_last_batch_smaller_than_world_size_gives_empty_shards() -> None:
    out = _all_ranks(9, 4, 4, shuffle=False)
    assert [[b.tolist() for b in rank] for rank in out] == [
        [[0], [4], [8]],
        [[1], [5], []],
        [[2], [6], []],
        [[3], [7], []],
    ]
    assert [b.tolist() for b in batches(10, 4, shuffle=False, drop_last=True)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_batches_shuffle_uses_generator_then_global_rng() -> None:
    a = [b.tolist() for b in batches(50, 8, generator=torch.Generator().manual_seed(1))]
    b = [b.tolist() for b in batches(50, 8, generator=torch.Generator().manual_seed(1))]
    c = [b.tolist() for b in batches(50, 8, generator=torch.Generator().manual_seed(2))]
    assert a == b
    assert a != c
    flat = [i for batch in a for i in batch]
    assert sorted(flat) == list(range(50))
    assert flat != list(range(50))  # actually shuffled
    torch.manual_seed(3)
    d = [b.tolist() for b in batches(50, 8)]
    torch.manual_seed(3)
    assert d == [b.tolist() for b in batches(50, 8)]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "pattern"),
    [
        ((-1, 4), {}, ValueError, r"0 <= n, got -1"),
        ((10, 0), {}, ValueError, r"1 <= batch_size, got 0"),
        ((10, 4), {"world_size": 0}, ValueError, r"1 <= world_size, got 0"),
        ((10, 4), {"rank": 2, "world_size": 2}, ValueError, r"0 <= rank < world_size = 2, got 2"),
        ((10, 4), {"rank": -1, "world_size": 2}, ValueError, r"rank .* got -1"),
        ((10, 6), {"world_size": 4}, ValueError, r"batch_size = 6 and world_size = 4 \(remainder 2\)"),
        ((10, 4.0), {}, TypeError, r"batch_size must be an int, got float"),
        ((True, 4), {}, TypeError, r"n must be an int, got bool"),
    ],
)
def test_batches_arguments_checked_at_call_time(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], pattern: str
) -> None:
    with pytest.raises(error, match=pattern):
        batches(*args, **kwargs)  # type: ignore[arg-type]  # no next(): the check must not wait for iteration


def test_batches_accepts_numpy_integers() -> None:
    assert [b.tolist() for b in batches(np.int64(5), np.int64(2), shuffle=False)] == [[0, 1], [2, 3], [4]]


# ----------------------------------------------------------------------------------------------------------------
# binarize
# ----------------------------------------------------------------------------------------------------------------
def test_binarize_is_bernoulli_of_each_pixel() -> None:
    n = 100_000
    x = torch.cat(
        [torch.full((n,), 0.2), torch.full((n,), 0.9), torch.rand(n, generator=torch.Generator().manual_seed(0))]
    )
    b = binarize(x, torch.Generator().manual_seed(1))
    assert b.dtype == x.dtype
    assert b.shape == x.shape
    assert set(torch.unique(b).tolist()) <= {0.0, 1.0}
    # each block's mean within 5 standard errors sqrt(sum p (1 - p)) / n of its expectation (false alarm ~6e-7)
    for block in range(3):
        p, draws = x[block * n : (block + 1) * n], b[block * n : (block + 1) * n]
        standard_error = float((p * (1 - p)).sum().sqrt()) / n
        assert abs(float(draws.mean() - p.mean())) < 5 * standard_error


def test_binarize_exact_at_zero_and_one_and_reproducible() -> None:
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(100, 1)
    assert torch.equal(binarize(x), x)
    y = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(binarize(y, torch.Generator().manual_seed(5)), binarize(y, torch.Generator().manual_seed(5)))
    assert binarize(torch.empty(0, 3)).shape == (0, 3)


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ([0.5, -0.1, 0.3], r"min -0\.1\d* and max 0\.5"),
        ([0.5, 1.5], r"min 0\.5 and max 1\.5"),
        ([0.5, math.nan], r"contains NaN"),
    ],
)
def test_binarize_out_of_range(values: list[float], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        binarize(torch.tensor(values))


def test_binarize_integer_input() -> None:
    with pytest.raises(TypeError, match=r"floating .* got dtype torch\.uint8"):
        binarize(torch.zeros(3, dtype=torch.uint8))


def test_the_digits_read_without_importing_sklearn_equal_sklearns_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from sklearn.datasets import load_digits as sklearn_load_digits

    from kldiv import data

    bunch = sklearn_load_digits()
    pixels, labels = data._digits_arrays()
    assert np.array_equal(pixels, bunch.data.astype(np.float32))
    assert np.array_equal(labels, bunch.target)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # the fallback: scikit-learn's loader
    fallback = data._digits_arrays()
    assert np.array_equal(fallback[0], pixels)
    assert np.array_equal(fallback[1], labels)
