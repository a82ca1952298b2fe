"""Tests of the offline datasets in archgrow.data."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from archgrow.data import ByteImages, DataSplit, MapInputs, digits, generated, mnist, mnist_split
from archgrow.data.datasets import as_tensors, indexable_by_batch, labels_of
from archgrow.data.mnist import read_idx_split

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
# Label counts of the official test split, from the README beside the files.
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _needs_mnist() -> None:
    if not MNIST_DIR.is_dir():
        pytest.skip("../shared/data/mnist not present (only beside the checkout and in CI)")


def _write_idx(path: Path, magic: int, dims: list[int], payload: bytes) -> None:
    raw = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + payload
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def _write_fake_mnist(root: Path, prefix: str, labels: list[int], fill: int) -> None:
    n = len(labels)
    _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", 0x803, [n, 28, 28], bytes([fill]) * (n * 28 * 28))
    _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 0x801, [n], bytes(labels))


# --- generated ---------------------------------------------------------------------------------


def test_generated_shapes_and_dtypes() -> None:
    split = generated(4)
    assert isinstance(split, DataSplit)
    assert split.x_train.shape == (4000, 64) and split.x_test.shape == (1000, 64)
    assert split.y_train.shape == (4000,) and split.y_test.shape == (1000,)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.long
    assert set(torch.cat([split.y_train, split.y_test]).tolist()) == {0, 1}
    assert split.n_features == 64 and split.num_classes == 2
    assert len(split.train_dataset()) == 4000 and len(split.test_dataset()) == 1000
    x0, y0 = split.test_dataset()[0]
    assert torch.equal(x0, split.x_test[0]) and y0 == split.y_test[0]


@pytest.mark.parametrize("n_independent", [1, 4, 16, 64])
def test_generated_labels_roughly_balanced(n_independent: int) -> None:
    split = generated(n_independent)
    ones = torch.cat([split.y_train, split.y_test]).float().mean().item()
    assert 0.4 <= ones <= 0.6


def test_generated_labels_follow_the_feature_sum() -> None:
    # Without noise the label is exactly "sum of features above its mean"; with the default noise it still
    # agrees almost everywhere, because the sum has a far larger spread than the noise.
    for noise, min_agreement in ((0.0, 0.999), (0.1, 0.97)):
        split = generated(8, noise=noise)
        x = torch.cat([split.x_train, split.x_test]).double()
        y = torch.cat([split.y_train, split.y_test])
        total = x.sum(dim=1)
        agreement = ((total > total.mean()).long() == y).double().mean().item()
        assert agreement >= min_agreement, (noise, agreement)


def test_generated_deterministic_per_seed() -> None:
    a, b = generated(4, seed=7), generated(4, seed=7)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = generated(4, seed=8)
    assert not torch.equal(a.x_train, c.x_train)
    assert not torch.equal(a.y_train, c.y_train)


def test_generated_leaves_global_rng_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    generated(4, n_samples=100)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("n_independent", [1, 4, 16])
def test_generated_rank_equals_n_independent(n_independent: int) -> None:
    x = generated(n_independent).x_train.double()
    # The dependent columns are float32 products, so their residual is ~1e-7 of the scale, far below rtol.
    assert torch.linalg.matrix_rank(x, rtol=1e-5).item() == n_independent
    # and the first n_independent columns alone already have full rank
    assert torch.linalg.matrix_rank(x[:, :n_independent], rtol=1e-5).item() == n_independent


@pytest.mark.parametrize(("n_samples", "test_frac", "n_test"), [(5000, 0.2, 1000), (5000, 0.1, 500), (10, 0.5, 5)])
def test_generated_split_sizes(n_samples: int, test_frac: float, n_test: int) -> None:
    split = generated(2, n_samples=n_samples, n_features=8, test_frac=test_frac)
    assert split.x_test.shape == (n_test, 8)
    assert split.x_train.shape == (n_samples - n_test, 8)


def test_generated_split_is_first_and_last_samples() -> None:
    # The test half is the tail of the same sequence: more samples only extend it.
    small = generated(3, n_samples=100, test_frac=0.5)
    assert small.x_train.shape[0] == 50
    full = generated(3, n_samples=100, test_frac=0.2)
    assert torch.equal(small.x_train, full.x_train[:50])
    assert torch.equal(small.x_test[-20:], full.x_test)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_independent": 0}, r"n_independent=0 .*1 <= n_independent <= n_features \(64\)"),
        ({"n_independent": 65}, r"n_independent=65 .*1 <= n_independent <= n_features \(64\)"),
        ({"n_independent": 4, "n_features": 3}, r"n_independent=4 .*n_features \(3\)"),
        ({"n_independent": 1.5}, r"n_independent=1.5 "),
        ({"n_independent": 1, "n_features": 0}, r"n_features=0 .*integer >= 1"),
        ({"n_independent": 1, "n_samples": 1}, r"n_samples=1 .*integer >= 2"),
        ({"n_independent": 1, "test_frac": 0.0}, r"test_frac=0.0 .*0 < test_frac < 1"),
        ({"n_independent": 1, "test_frac": 1.0}, r"test_frac=1.0 .*0 < test_frac < 1"),
        ({"n_independent": 1, "n_samples": 10, "test_frac": 0.01}, r"gives 0 test and 10 train samples"),
        ({"n_independent": 1, "noise": -0.1}, r"noise=-0.1 .*0 <= noise <= 1"),
        ({"n_independent": 1, "seed": "a"}, r"seed='a' .*integer"),
    ],
)
def test_generated_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generated(**kwargs)


def test_datasplit_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match=r"x_train has 3 samples but y_train has 2"):
        DataSplit.from_tensors(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), torch.zeros(1), "bad")


# --- mnist -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    _needs_mnist()
    return mnist(MNIST_DIR)


def test_mnist_test_split(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.long
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert torch.bincount(y, minlength=10).tolist() == MNIST_TEST_COUNTS
    # no normalisation: the mean pixel of MNIST is about 0.13
    assert 0.1 < x.mean().item() < 0.16


def test_mnist_unflattened_and_limit(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist(MNIST_DIR, flatten=False, limit=50)
    assert x.shape == (50, 1, 28, 28) and y.shape == (50,)
    assert torch.equal(x.reshape(50, 784), mnist_test[0][:50])
    assert torch.equal(y, mnist_test[1][:50])
    assert mnist(MNIST_DIR, limit=20000)[0].shape[0] == 10000


def test_mnist_reads_uncompressed_files(tmp_path: Path, mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(MNIST_DIR / f"{stem}.gz", "rb") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    x, y = mnist(tmp_path)
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])


def test_mnist_corrupted_header_names_file(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path, "t10k", [0] * 10, fill=0)
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    _write_idx(bad, 0x0000_0801, [10, 28, 28], bytes(10 * 28 * 28))  # label magic in the image file
    with pytest.raises(
        ValueError, match=r"t10k-images-idx3-ubyte\.gz: IDX magic number 0x00000801, expected 0x00000803"
    ):
        mnist(tmp_path)


def test_mnist_truncated_or_mismatched_files(tmp_path: Path) -> None:
    images = tmp_path / "t10k-images-idx3-ubyte"
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    _write_idx(images, 0x803, [3, 28, 28], bytes(2 * 28 * 28))
    _write_idx(labels, 0x801, [3], bytes([1, 2, 3]))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: header declares dimensions \[3, 28, 28\]"):
        mnist(tmp_path)
    _write_idx(images, 0x803, [3, 28, 28], bytes(3 * 28 * 28))
    _write_idx(labels, 0x801, [2], bytes([1, 2]))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: 2 labels but .*holds 3 images"):
        mnist(tmp_path)
    _write_idx(labels, 0x801, [3], bytes([1, 2, 10]))
    with pytest.raises(ValueError, match=r"label 10 found, expected classes 0\.\.9"):
        mnist(tmp_path)
    labels.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte: 2 bytes is shorter than the 8-byte IDX header"):
        mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz: cannot be read as gzip"):
        mnist(tmp_path)


def test_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MNIST directory .*nowhere does not exist"):
        mnist(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"train-images-idx3-ubyte\.gz \(or train-images-idx3-ubyte\) not found"
    ):
        mnist(tmp_path, split="train")


def test_mnist_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split='valid' .*\['test', 'train'\]"):
        mnist(tmp_path, split="valid")
    with pytest.raises(ValueError, match=r"limit=0 .*None or an integer >= 1"):
        mnist(tmp_path, limit=0)


def test_mnist_split_of_test_files(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    split = mnist_split(MNIST_DIR, test_frac=0.2, seed=0)
    assert split.x_train.shape == (8000, 784) and split.x_test.shape == (2000, 784)
    assert "test split" in split.name
    assert split.n_features == 784 and split.num_classes == 10
    # the halves partition the 10,000 test images
    counts = torch.bincount(torch.cat([split.y_train, split.y_test]), minlength=10).tolist()
    assert counts == MNIST_TEST_COUNTS
    assert torch.isclose(split.x_train.sum() + split.x_test.sum(), mnist_test[0].sum(), rtol=1e-5)
    again = mnist_split(MNIST_DIR, test_frac=0.2, seed=0)
    assert torch.equal(split.y_test, again.y_test) and torch.equal(split.x_test, again.x_test)
    other = mnist_split(MNIST_DIR, test_frac=0.2, seed=1)
    assert not torch.equal(split.y_test, other.y_test)
    assert mnist_split(MNIST_DIR, limit=100).x_test.shape == (20, 784)


def test_mnist_split_prefers_train_files(tmp_path: Path) -> None:
    _write_fake_mnist(tmp_path, "t10k", [0, 1, 2, 3], fill=0)
    test_only = mnist_split(tmp_path, test_frac=0.5)
    assert "test split" in test_only.name and test_only.x_train.shape == (2, 784)
    _write_fake_mnist(tmp_path, "train", list(range(10)), fill=255)
    split = mnist_split(tmp_path, test_frac=0.2)
    assert "train split" in split.name
    assert split.x_train.shape == (8, 784) and split.x_test.shape == (2, 784)
    assert sorted(torch.cat([split.y_train, split.y_test]).tolist()) == list(range(10))
    assert torch.all(split.x_train == 1.0)


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_range_and_split() -> None:
    pytest.importorskip("sklearn")
    split = digits()
    assert split.x_train.shape == (1438, 64) and split.x_test.shape == (359, 64)
    assert split.x_train.dtype == torch.float32 and split.y_train.dtype == torch.long
    x = torch.cat([split.x_train, split.x_test])
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    y = torch.cat([split.y_train, split.y_test])
    assert y.shape == (1797,) and sorted(set(y.tolist())) == list(range(10))
    assert split.n_features == 64 and split.num_classes == 10
    half = digits(test_frac=0.5)
    assert half.x_test.shape[0] + half.x_train.shape[0] == 1797 and abs(half.x_test.shape[0] - 898.5) <= 0.5


def test_digits_deterministic_per_seed() -> None:
    pytest.importorskip("sklearn")
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    with pytest.raises(ValueError, match=r"test_frac=1\.5 .*0 < test_frac < 1"):
        digits(test_frac=1.5)


def test_digits_without_sklearn_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install scikit-learn.*archgrow\[data\]"):
        digits()


# --------------------------------------------------------------------------- CIFAR (torchvision)
def test_cifar_missing_files_say_where_and_what_to_do(tmp_path):
    pytest.importorskip("torchvision")
    from archgrow import ArchgrowError
    from archgrow.data import cifar

    with pytest.raises(ArchgrowError, match=r"cifar10 not found .* expects .*cifar-10-batches-py.*download=True"):
        cifar(tmp_path)
    with pytest.raises(ArchgrowError, match=r"cifar100 not found .*cifar-100-python"):
        cifar(tmp_path, "cifar100")
    with pytest.raises(ValueError, match="accepted: cifar10, cifar100"):
        cifar(tmp_path, "cifar20")


# --------------------------------------------------------------------------- Datasets
def _fingerprint(split: DataSplit) -> str:
    digest = hashlib.sha256()
    for t in (split.x_train, split.y_train, split.x_test, split.y_test):
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_halves(split: DataSplit, sample_shape: tuple[int, ...]) -> None:
    """Both halves are map-style Datasets of (float32 input, int64 label); a list of indices (what
    the runner's loader asks of batch-indexable halves) gives the per-sample values stacked."""
    for half, (x_all, y_all) in ((split.train, (split.x_train, split.y_train)), (split.test, (split.x_test, split.y_test))):
        assert isinstance(half, Dataset) and len(half) == len(y_all)
        x, y = half[len(half) - 1]
        assert x.shape == sample_shape and x.dtype == torch.float32 and y.dtype == torch.long
        assert torch.equal(x, x_all[-1]) and int(y) == int(y_all[-1])
        if indexable_by_batch(half):
            xb, yb = half[[2, 0, 1]]
            assert torch.equal(xb, torch.stack([half[i][0] for i in (2, 0, 1)])) and yb.tolist() == y_all[[2, 0, 1]].tolist()


def test_loaders_return_datasets_with_the_samples_of_before() -> None:
    # Fingerprints of the tensors the loaders returned before they returned Datasets (same seeds):
    # the split, order and values are unchanged, so published runs stay reproducible.
    g = generated(4, n_samples=200, n_features=16, seed=7)
    assert isinstance(g.train, TensorDataset) and _fingerprint(g) == "87b7a84ee14c573e"
    _check_halves(g, (16,))
    pytest.importorskip("sklearn")
    d = digits(seed=3)
    assert isinstance(d.train, Subset) and _fingerprint(d) == "56b7fe70e1a6fe98"
    _check_halves(d, (64,))


def test_mnist_loaders_return_datasets_with_the_samples_of_before(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    m = mnist_split(MNIST_DIR, limit=300, seed=1)
    assert isinstance(m.train.dataset, ByteImages) and _fingerprint(m) == "cb2fcb593f854e2b"
    _check_halves(m, (784,))
    images = read_idx_split(MNIST_DIR, split="test", flatten=False, limit=None, dataset="MNIST", caller="t")
    assert images.pixels.dtype == torch.uint8  # the bytes, a quarter of the float size
    x, y = images[3]
    assert x.shape == (1, 28, 28) and torch.equal(x.reshape(784), mnist_test[0][3]) and y == mnist_test[1][3]
    assert torch.equal(labels_of(m.train), m.y_train) and m.num_classes == 10


def test_fashion_mnist_returns_datasets() -> None:
    from archgrow.data.fashion_mnist import available, fashion_mnist

    if not available():
        pytest.skip("Fashion-MNIST IDX files not installed (apt-get install dataset-fashion-mnist)")
    split = fashion_mnist(limit=100, test_limit=50)
    assert isinstance(split.train, ByteImages) and (len(split.train), len(split.test)) == (100, 50)
    _check_halves(split, (784,))


def test_uncompressed_idx_files_are_memory_mapped_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(MNIST_DIR / f"{stem}.gz", "rb") as src, open(tmp_path / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    images = read_idx_split(tmp_path, split="test", flatten=True, limit=None, dataset="MNIST", caller="t")
    assert torch.equal(images[[7, 9998]][0], mnist_test[0][[7, 9998]])


def test_cifar_layout_bytes_give_the_values_of_before() -> None:
    # CIFAR's torchvision arrays are (N, H, W, C) bytes; samples are converted as the whole array was.
    data = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = ByteImages(data.permute(0, 3, 1, 2), torch.arange(5))
    before = data.permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(images[4][0], before[4]) and torch.equal(images[[4, 1]][0], before[[4, 1]])
    assert torch.equal(as_tensors(images)[0], before)


def test_cifar_returns_datasets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    datasets = pytest.importorskip("torchvision.datasets")
    from archgrow.data import cifar

    class FakeCifar:  # torchvision's attributes, without the files
        def __init__(self, root: str, train: bool, download: bool):
            n = 30 if train else 10
            self.data = torch.arange(n * 32 * 32 * 3).remainder(256).to(torch.uint8).reshape(n, 32, 32, 3).numpy()
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(datasets, "CIFAR10", FakeCifar)
    split = cifar(tmp_path, limit=20)
    assert isinstance(split.train, ByteImages) and (len(split.train), len(split.test)) == (20, 10)
    _check_halves(split, (3, 32, 32))
    assert split.num_classes == 10


def test_datasplit_refuses_what_is_not_a_dataset_and_empty_halves() -> None:
    ok = TensorDataset(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"DataSplit 'x': test is a Tensor; it must be a map-style .*from_tensors"):
        DataSplit(ok, torch.zeros(2, 3), "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"DataSplit 'x': the train half is empty"):
        DataSplit(TensorDataset(torch.zeros(0, 3), torch.zeros(0)), ok, "x")


def test_tensor_accessors_stack_any_dataset_and_labels_are_read_without_inputs() -> None:
    class Squares(Dataset):
        def __init__(self, n: int):
            self.n, self.reads = n, 0

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            self.reads += 1
            return torch.full((2,), float(i * i)), i % 3

    train, test = Squares(5), Squares(2)
    split = DataSplit(train, test, "squares")
    assert split.input_shape == (2,) and split.n_features == 2 and split.example().shape == (1, 2)
    assert split.num_classes == 3  # read by scanning: no targets attribute
    assert split.x_train[:, 0].tolist() == [0, 1, 4, 9, 16] and split.y_train.tolist() == [0, 1, 2, 0, 1]
    reads = train.reads
    assert split.x_train is split.x_train and train.reads == reads  # stacked once
    images = ByteImages(torch.zeros(4, 2, 2, dtype=torch.uint8), torch.tensor([0, 3, 1, 1]))
    assert labels_of(Subset(MapInputs(images, torch.flatten), [3, 1])).tolist() == [1, 3]
