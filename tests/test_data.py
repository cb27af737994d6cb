"""The data layer: tensor batching, DDP sharding, the real torchvision readers, error messages."""

from pathlib import Path

import lightning
import pytest
import torch

from tests.data_files import (
    CIFAR10_CLASSES,
    SHARED_DATA,
    MNISTWritten,
    cifar10_image,
    copy_real_mnist,
    flat_colour,
    write_cifar10_jpeg_mirror,
    write_mnist_idx,
)
from vaezoo.data import (
    CIFAR10DataModule,
    EpochBatchSampler,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
    TensorBatchLoader,
)
from vaezoo.data import cifar10 as cifar10_module
from vaezoo.errors import VAEZooError
from vaezoo.registry import DATASETS

# Lightning 2.6 calls a torch.utils._pytree API that torch 2.14 deprecates (vaezoo.cli filters it too).
pytestmark = pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# Fixtures from tests/conftest.py: no_network (autouse: urlopen raises URLError), tiny_mnist,
# tiny_cifar.
TinyMNIST = tuple[Path, MNISTWritten]


def batches_of(sampler: EpochBatchSampler) -> list[list[int]]:
    return [batch.tolist() for batch in sampler]


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_covers_the_epoch_once(drop_last: bool) -> None:
    sampler = EpochBatchSampler(103, 10, shuffle=True, drop_last=drop_last, seed=0)
    batches = batches_of(sampler)
    flat = [i for batch in batches for i in batch]
    assert len(batches) == len(sampler) == (10 if drop_last else 11)
    assert len(set(flat)) == len(flat) == (100 if drop_last else 103)
    assert set(flat) <= set(range(103))
    assert all(len(batch) == 10 for batch in batches[:10])
    assert flat != sorted(flat)  # shuffled


def test_set_epoch_reshuffles_reproducibly() -> None:
    sampler = EpochBatchSampler(50, 7, shuffle=True, drop_last=False, seed=3)
    first = batches_of(sampler)
    assert batches_of(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = batches_of(sampler)
    assert second != first
    assert sorted(sum(second, [])) == list(range(50))
    assert batches_of(EpochBatchSampler(50, 7, shuffle=True, drop_last=False, seed=4)) != first
    ordered = EpochBatchSampler(50, 7, shuffle=False, drop_last=False)
    ordered.set_epoch(5)
    assert sum(batches_of(ordered), []) == list(range(50))


@pytest.mark.parametrize("n", [103, 120, 7])
def test_training_shards_are_disjoint_full_and_equal(n: int) -> None:
    world = 3
    shards = [
        EpochBatchSampler(n, 4, shuffle=True, drop_last=True, seed=1, rank=r, world_size=world) for r in range(world)
    ]
    per_rank = [batches_of(s) for s in shards]
    counts = {len(b) for b in per_rank}
    assert counts == {len(shards[0])} == {n // 12}  # the same number of batches on every rank
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert len(flat) == len(set(flat))  # disjoint


def test_eval_shards_cover_everything_once() -> None:
    world, n = 4, 103
    shards = [EpochBatchSampler(n, 5, shuffle=False, drop_last=False, rank=r, world_size=world) for r in range(world)]
    per_rank = [sum(batches_of(s), []) for s in shards]
    assert sorted(sum(per_rank, [])) == list(range(n))
    assert per_rank[1] == list(range(1, n, world))
    assert [len(s) for s in shards] == [-(-len(p) // 5) for p in per_rank] == [6, 6, 6, 5]  # 26, 26, 26, 25 images
    few = [EpochBatchSampler(2, 5, shuffle=False, drop_last=False, rank=r, world_size=world) for r in range(world)]
    assert [batches_of(s) for s in few] == [[[0]], [[1]], [], []]
    assert [len(s) for s in few] == [1, 1, 0, 0]


def test_sampler_reads_rank_from_torch_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: 2)
    sampler = EpochBatchSampler(10, 2, shuffle=False, drop_last=False)
    assert batches_of(sampler) == [[1, 3], [5, 7], [9]]
    assert len(sampler) == 3


def test_sampler_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(VAEZooError, match="rank"):
        list(EpochBatchSampler(10, 2, shuffle=False, drop_last=False, rank=2, world_size=2))


def test_mid_epoch_resume_skips_the_batches_done() -> None:
    sampler = EpochBatchSampler(40, 4, shuffle=True, drop_last=True, seed=0)
    sampler.set_epoch(2)
    full = batches_of(sampler)
    iterator = iter(sampler)
    done = [next(iterator).tolist() for _ in range(3)]
    state = sampler.state_dict()
    assert state == {"epoch": 2, "batches_yielded": 3}

    resumed = EpochBatchSampler(40, 4, shuffle=True, drop_last=True, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning calls this with the restored epoch
    assert done + batches_of(resumed) == full
    assert batches_of(resumed) == full  # the skip applies to one pass only
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a different epoch starts from its beginning
    assert len(batches_of(resumed)) == 10


def test_tensor_batch_loader_yields_uint8_images_and_int64_labels() -> None:
    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 1, 2, 3).contiguous()
    labels = torch.arange(20) * 10
    loader = TensorBatchLoader(images, labels, EpochBatchSampler(20, 6, shuffle=True, drop_last=False, seed=0))
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    for x, y in batches:
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 2, 3)
        assert y.dtype == torch.int64
        assert torch.equal(x[:, 0, 0, 0].long() * 10, y)  # images and labels indexed together
    assert loader.state_dict() == {"epoch": 0, "batches_yielded": 4}
    with pytest.raises(VAEZooError, match="labels"):
        TensorBatchLoader(images, labels[:5], EpochBatchSampler(20, 6, shuffle=False, drop_last=False))


# ---------------------------------------------------------------- MNIST (tiny files)


def fit_test(dm: MNISTDataModule | CIFAR10DataModule) -> None:
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")


def test_tiny_mnist_splits_shapes_and_values(tiny_mnist: TinyMNIST) -> None:
    root, written = tiny_mnist
    dm = MNISTDataModule(
        root=str(root), batch_size=8, eval_batch_size=5, val_size=10, binarize="none", download=False
    )
    fit_test(dm)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert train.images.shape == (54, 1, 28, 28) and train.images.dtype == torch.uint8
    assert val.images.shape == (10, 1, 28, 28) and test.images.shape == (16, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    images, labels = written["train"]
    assert torch.equal(train.images[:, 0], torch.from_numpy(images[dm.train_indices.numpy()]))
    assert torch.equal(val.labels, torch.from_numpy(labels[dm.val_indices.numpy()]).long())
    assert torch.equal(test.images[:, 0], torch.from_numpy(written["test"][0]))
    assert sorted(torch.cat([dm.train_indices, dm.val_indices]).tolist()) == list(range(64))
    assert len(train) == 6 and len(val) == 2 and len(test) == 4
    assert [len(y) for _, y in test] == [5, 5, 5, 1]
    assert dm.predict_dataloader().images is test.images


def test_split_depends_only_on_the_seed(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist

    def val_indices(seed: int) -> list[int]:
        dm = MNISTDataModule(root=str(root), val_size=10, seed=seed, batch_size=4, download=False)
        dm.setup("fit")
        return dm.val_indices.tolist()

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)


def test_setup_loads_each_split_once(tiny_mnist: TinyMNIST, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=4, download=False)
    calls = []
    load = dm._load
    monkeypatch.setattr(dm, "_load", lambda train: calls.append(train) or load(train))
    for stage in ("fit", "validate", "test", "predict", "fit"):
        dm.setup(stage)
    assert calls == [True, False]


def binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def test_static_binarisation_is_fixed(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="static", download=False)
    fit_test(dm)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert set(loader.images.unique().tolist()) == {0, 255}
    x = dm.train_dataloader().images[:8]
    first, second = dm._to_float(x, training=True), dm._to_float(x, training=True)
    assert binary(first) and torch.equal(first, second)
    again = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="static", download=False)
    again.setup("fit")
    assert torch.equal(again.train_dataloader().images, dm.train_dataloader().images)


def test_dynamic_binarisation_redraws_training_batches_only(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="dynamic", download=False)
    fit_test(dm)
    train = dm.train_dataloader().images
    assert len(train.unique()) > 2  # stored as grey levels
    first, second = dm._to_float(train, training=True), dm._to_float(train, training=True)
    assert binary(first) and binary(second) and not torch.equal(first, second)
    # Grey level g becomes 1 with probability g / 255.
    assert abs(first.mean().item() - train.float().mean().item() / 255) < 0.01
    for loader in (dm.val_dataloader(), dm.test_dataloader()):  # drawn once at setup
        assert set(loader.images.unique().tolist()) == {0, 255}
        assert torch.equal(dm._to_float(loader.images, training=False), loader.images.float() / 255)
    again = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="dynamic", download=False)
    again.setup("fit")
    assert torch.equal(again.val_dataloader().images, dm.val_dataloader().images)


def test_dynamic_draw_is_bernoulli_at_every_grey_level(tiny_mnist: TinyMNIST) -> None:
    """The draw 1[u < g / 255] is Bernoulli(g / 255) at each level: 0 and 255 exactly, the rest within 5 sigma."""
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="dynamic", download=False)
    levels = torch.tensor([0, 1, 3, 64, 128, 200, 254, 255], dtype=torch.uint8)
    n = 20_000  # draws per level
    x = levels.repeat_interleave(n).view(-1, 1, 1, 1)  # (8 n, 1, 1, 1)
    torch.manual_seed(0)
    draws = dm._to_float(x, training=True).view(len(levels), n)
    p = levels.double() / 255
    freq = draws.double().mean(1)
    assert freq[0] == 0 and freq[-1] == 1
    sigma = (p * (1 - p) / n).sqrt()
    assert ((freq - p).abs()[1:-1] < 5 * sigma[1:-1]).all(), (freq, p)


def test_on_after_batch_transfer_makes_floats(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=4, binarize="none", download=False)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    out, labels = dm.on_after_batch_transfer((x, y), 0)  # no trainer attached: not training
    assert out.dtype == torch.float32 and out.shape == x.shape and labels is y
    assert torch.equal(out, x.float() / 255) and out.max() <= 1 and out.min() >= 0

    class FakeTrainer:
        training = True

    dynamic = MNISTDataModule(root=str(root), val_size=10, batch_size=4, download=False)
    dynamic.trainer = FakeTrainer()
    out, _ = dynamic.on_after_batch_transfer((x, y), 0)
    assert binary(out) and not torch.equal(out, x.float() / 255)
    FakeTrainer.training = False
    assert torch.equal(dynamic.on_after_batch_transfer((x, y), 0)[0], x.float() / 255)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive"),
        ({"batch_size": -3}, "batch_size must be a positive"),
        ({"eval_batch_size": 0}, "eval_batch_size"),
        ({"val_size": -1}, "val_size"),
        ({"seed": -1}, "seed"),
        ({"binarize": "yes"}, "binarize must be one of"),
    ],
)
def test_bad_settings_raise(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(VAEZooError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_too_large_names_both_numbers(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=64, download=False)
    with pytest.raises(VAEZooError, match=r"val_size=64.*64 training images"):
        dm.setup("fit")


def test_batch_larger_than_the_training_set_raises(tiny_mnist: TinyMNIST) -> None:
    root, _ = tiny_mnist
    dm = MNISTDataModule(root=str(root), val_size=10, batch_size=100, download=False)
    dm.setup("fit")
    with pytest.raises(VAEZooError, match="batch_size=100.*54 training images"):
        dm.train_dataloader()
    assert len(dm.val_dataloader()) == 1  # evaluation keeps its partial batch


def test_datamodule_that_reads_nothing_is_refused_when_built() -> None:
    """The base class, or a subclass without _load, would raise NotImplementedError once the run started."""
    names = ", ".join(DATASETS.names())
    assert {"cifar10", "fashion_mnist", "mnist"} <= set(DATASETS.names())
    with pytest.raises(VAEZooError, match=rf"no dataset chosen: .* --data NAME \(datasets: {names};"):
        ImageDataModule()

    class NoLoad(ImageDataModule):
        image_shape = (1, 2, 2)

        def _prepare(self) -> None:
            pass

    with pytest.raises(VAEZooError, match=r"test_data\..*NoLoad does not implement _load, so it cannot read any images"):
        NoLoad()


def test_dataloader_before_setup_raises() -> None:
    with pytest.raises(VAEZooError, match="setup"):
        MNISTDataModule().train_dataloader()


# ---------------------------------------------------------------- MNIST errors


@pytest.mark.parametrize("download", [True, False])
def test_missing_mnist_names_the_files(tmp_path: Path, download: bool) -> None:
    dm = FashionMNISTDataModule(root=str(tmp_path), download=download)
    with pytest.raises(VAEZooError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert "--data.root" in message
    assert ("network disabled in tests" in message) == download
    assert ("with download off" in message) != download
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib traceback


def test_missing_mnist_fails_in_setup_too(tmp_path: Path) -> None:
    with pytest.raises(VAEZooError, match="MNIST not found"):
        MNISTDataModule(root=str(tmp_path)).setup("fit")


def test_damaged_gz_is_reported(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(VAEZooError, match="fail torchvision's md5 check: train-images-idx3-ubyte.gz"):
        MNISTDataModule(root=str(tmp_path)).prepare_data()


@pytest.mark.parametrize(
    ("name", "keep"),
    [
        ("train-images-idx3-ubyte", 16 + 28 * 28 * 10),  # cut mid-data
        ("train-images-idx3-ubyte", 6),  # cut inside the header
        ("train-labels-idx1-ubyte", 2),
        ("t10k-images-idx3-ubyte", 100),
    ],
)
def test_truncated_idx_file_is_named(tiny_mnist: TinyMNIST, name: str, keep: int) -> None:
    root, _ = tiny_mnist
    path = root / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(VAEZooError, match="corrupt or truncated") as info:
        MNISTDataModule(root=str(root), val_size=10, download=True).prepare_data()
    assert str(path) in str(info.value)


def test_label_count_mismatch_is_named(tmp_path: Path) -> None:
    write_mnist_idx(tmp_path, n_train=20, n_test=4)
    write_mnist_idx(tmp_path / "other", n_train=19, n_test=4)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "train-labels-idx1-ubyte").write_bytes((tmp_path / "other/MNIST/raw/train-labels-idx1-ubyte").read_bytes())
    with pytest.raises(VAEZooError, match="19 labels but .* 20 images"):
        MNISTDataModule(root=str(tmp_path), val_size=2, download=False).setup("fit")


# ---------------------------------------------------------------- real MNIST / Fashion-MNIST


@pytest.mark.parametrize(
    ("cls", "folder", "train_counts", "test_counts"),
    [
        (
            MNISTDataModule,
            "MNIST",
            [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
        ),
        (FashionMNISTDataModule, "FashionMNIST", [6000] * 10, [1000] * 10),
    ],
)
def test_real_mnist_from_the_official_gz(
    tmp_path: Path, cls: type[MNISTDataModule], folder: str, train_counts: list[int], test_counts: list[int]
) -> None:
    copy_real_mnist(tmp_path, folder)
    dm = cls(root=str(tmp_path), batch_size=128, binarize="none", download=True)  # md5 check + extract, offline
    fit_test(dm)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert (len(train.images), len(val.images), len(test.images)) == (55000, 5000, 10000)
    assert len(train) == 55000 // 128
    assert torch.bincount(torch.cat([train.labels, val.labels])).tolist() == train_counts
    assert torch.bincount(test.labels).tolist() == test_counts
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert 30 < train.images.float().mean() < 80  # grey levels, not binarised


# ---------------------------------------------------------------- CIFAR-10


def test_tiny_cifar_official_batches_are_chw(tiny_cifar: Path) -> None:
    dm = CIFAR10DataModule(root=str(tiny_cifar), val_size=8, batch_size=4, download=False)
    assert dm.source == "official"
    fit_test(dm)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert train.images.shape == (32, 3, 32, 32) and val.images.shape == (8, 3, 32, 32)
    assert test.images.shape == (8, 3, 32, 32) and train.images.is_contiguous()
    for k, i in enumerate(dm.train_indices.tolist()):
        assert torch.equal(train.images[k], torch.from_numpy(cifar10_image(i)))
        assert train.labels[k] == i % 10
    for k in range(8):
        assert torch.equal(test.images[k], torch.from_numpy(cifar10_image(40 + k)))
    image = test.images[3]
    assert (image[0] == 43).all() and image[1, 5, 0] == 5 and image[2, 0, 5] == 11  # R, G=row, B=2col+1


def test_cifar_download_true_uses_files_present(tiny_cifar: Path) -> None:
    dm = CIFAR10DataModule(root=str(tiny_cifar), val_size=8, batch_size=4, download=True)
    fit_test(dm)  # the md5s match, so nothing is fetched (the network is off)
    assert len(dm.test_dataloader().images) == 8


def test_corrupt_cifar_batch_is_named(tiny_cifar: Path) -> None:
    batch = tiny_cifar / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(VAEZooError, match="data_batch_3 fail torchvision's md5 check"):
        CIFAR10DataModule(root=str(tiny_cifar), val_size=8, download=False).prepare_data()


@pytest.mark.parametrize("download", [True, False])
def test_missing_cifar_says_where_to_put_what(tmp_path: Path, download: bool) -> None:
    dm = CIFAR10DataModule(root=str(tmp_path), download=download)
    with pytest.raises(VAEZooError) as info:
        dm.prepare_data()
    message = str(info.value)
    files = ("cifar-10-python.tar.gz", "cifar-10-batches-py", "cifar10_train_jpeg.zip", "cifar10_test_from_jpeg.npz")
    for name in files:
        assert name in message
    assert str(tmp_path) in message
    assert ("network disabled in tests" in message) == download
    assert info.value.__cause__ is None


def test_jpeg_mirror_is_used_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    write_cifar10_jpeg_mirror(tmp_path, n_train_per_class=3, n_test=6)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=5, batch_size=4, download=True)
    assert dm.source == "jpeg"
    with pytest.warns(UserWarning, match="lossy"):
        fit_test(dm)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert train.images.shape == (25, 3, 32, 32) and val.images.shape == (5, 3, 32, 32)
    images = torch.cat([train.images, val.images])
    labels = torch.cat([train.labels, val.labels])
    positions = torch.cat([dm.train_indices, dm.val_indices])
    for image, label, position in zip(images, labels, positions.tolist()):
        assert label == position // 3  # sorted by class folder, in CIFAR-10 class order
        colour = torch.tensor(flat_colour(int(label), position % 3), dtype=torch.float32)
        assert (image.float().mean(dim=(1, 2)) - colour).abs().max() <= 4  # R, G, B planes in order
    assert test.images.shape == (6, 3, 32, 32) and test.labels.dtype == torch.int64
    assert test.images[4, 0, 7, 0] == 7 and test.images[4, 1, 0, 9] == 9 and (test.images[4, 2] == 104).all()
    assert test.labels.tolist() == [0, 1, 2, 3, 4, 5]

    # Cached in the user's cache, never in the data folder (which may be shared or read-only).
    assert not list((tmp_path / "cifar-10").glob("*.npz.tmp")) and len(list((tmp_path / "cifar-10").iterdir())) == 2
    assert len(list((tmp_path / "user-cache" / "vaezoo").glob("cifar10_train_from_jpeg_*.npz"))) == 1

    def no_decoding(path: Path) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cifar10_module, "decode_jpeg_zip", no_decoding)
    again = CIFAR10DataModule(root=str(tmp_path), val_size=5, batch_size=4)
    with pytest.warns(UserWarning, match="lossy"):
        again.setup("fit")
    assert torch.equal(again.val_dataloader().images, val.images)


def test_jpeg_cache_unwritable_decodes_without_caching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    write_cifar10_jpeg_mirror(tmp_path, n_train_per_class=1, n_test=2)

    def read_only(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(cifar10_module, "atomic_write", read_only)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=2, batch_size=2)
    dm.prepare_data()
    with pytest.warns(UserWarning, match="lossy"):
        dm.setup("fit")
    assert len(dm.train_dataloader().images) == 8
    assert not list((tmp_path / "user-cache").rglob("*.npz"))


def test_jpeg_zip_with_unknown_class_folder(tmp_path: Path) -> None:
    import zipfile

    write_cifar10_jpeg_mirror(tmp_path, n_train_per_class=1, n_test=2)
    with zipfile.ZipFile(tmp_path / "cifar-10" / "cifar10_train_jpeg.zip", "a") as archive:
        archive.writestr("train/unicorn/0000.jpg", b"")
    with pytest.raises(VAEZooError, match="unicorn"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).prepare_data()


def test_real_cifar_jpeg_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = SHARED_DATA / "cifar-10"
    if not (source / "cifar10_train_jpeg.zip").is_file():
        pytest.skip(f"CIFAR-10 JPEG mirror not found under {source}")
    # Symlinks: nothing is written next to the shared files; the decoded cache lands in tmp_path.
    (tmp_path / "cifar-10").mkdir()
    for name in ("cifar10_train_jpeg.zip", "cifar10_test_from_jpeg.npz"):
        (tmp_path / "cifar-10" / name).symlink_to(source / name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    with pytest.warns(UserWarning, match="lossy"):
        fit_test(dm)
    train, val, test = dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()
    assert (len(train.images), len(val.images), len(test.images)) == (45000, 5000, 10000)
    assert torch.bincount(torch.cat([train.labels, val.labels])).tolist() == [5000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    means = torch.cat([train.images, val.images]).float().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.27, 122.93, 113.86]), atol=0.05)  # RGB order, per README
    assert CIFAR10_CLASSES[int(test.labels[0])] == "airplane"


# ---------------------------------------------------------------- with a Lightning Trainer


class CountingDataModule(ImageDataModule):
    """Image ``i`` is all ``i % 256`` and its label is ``i``: batches say which samples they hold."""

    image_shape = (1, 2, 2)
    num_classes = 1000
    name = "counting"

    def _prepare(self) -> None:
        pass

    def _load(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(40 if train else 10)
        return labels.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous(), labels


class Recorder(lightning.LightningModule):
    """Records the labels of every batch it is given, per stage and epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.seen: dict[str, list[list[int]]] = {"train": [], "val": []}
        self.epochs: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        assert x.dtype == torch.float32 and torch.equal(x[:, 0, 0, 0] * 255, y.float())
        self.seen["train"].append(y.tolist())
        self.epochs.append(self.current_epoch)
        return self.layer(x.flatten(1)).mean()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        assert x.dtype == torch.float32 and x.max() <= 1
        self.seen["val"].append(y.tolist())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(tmp_path: Path, **kwargs: object) -> lightning.Trainer:
    options = dict(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing="callbacks" in kwargs, default_root_dir=tmp_path,
    )
    return lightning.Trainer(**{**options, **kwargs})


def test_trainer_reshuffles_every_epoch_and_sees_floats(tmp_path: Path) -> None:
    model, dm = Recorder(), CountingDataModule(batch_size=6, eval_batch_size=4, val_size=8)
    trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0).fit(model, datamodule=dm)
    epochs = [sum((b for b, e in zip(model.seen["train"], model.epochs) if e == epoch), []) for epoch in (0, 1)]
    assert [len(e) for e in epochs] == [30, 30] and all(len(set(e)) == 30 for e in epochs)  # 32 // 6 batches
    assert epochs[0] != epochs[1]  # set_epoch reached the sampler
    assert set(epochs[0]) <= set(dm.train_indices.tolist())
    assert sorted(sum(model.seen["val"], [])) == sorted(dm.val_indices.tolist() * 2)


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the callbacks are not needed again
@pytest.mark.parametrize("resume_after", [10, 8], ids=["mid-epoch", "epoch-end"])
def test_trainer_resumes_where_it_stopped(tmp_path: Path, resume_after: int) -> None:
    first = Recorder()  # 2 epochs of 8 batches, a checkpoint every 2 steps and at each epoch end
    checkpoints = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path, filename="{step}", every_n_train_steps=2, save_top_k=-1
    )
    at_epoch_end = lightning.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "epochs", filename="{epoch}", save_top_k=-1
    )
    trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[checkpoints, at_epoch_end]).fit(
        first, datamodule=CountingDataModule(batch_size=4, val_size=8)
    )
    assert len(first.seen["train"]) == 16
    ckpt = tmp_path / "step=10.ckpt" if resume_after == 10 else tmp_path / "epochs" / "epoch=0.ckpt"
    resumed = Recorder()
    trainer(tmp_path, max_epochs=2, limit_val_batches=0).fit(
        resumed, datamodule=CountingDataModule(batch_size=4, val_size=8), ckpt_path=ckpt
    )
    assert resumed.seen["train"] == first.seen["train"][resume_after:]


def test_unwritable_mnist_root_says_copy_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.mnist

    def read_only(url: str, download_root: str, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", download_root)  # as extracting into a read-only root

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", read_only)
    with pytest.raises(VAEZooError, match=r"Cannot write to .*MNIST/raw .*writable folder"):
        MNISTDataModule(root=str(tmp_path)).prepare_data()


@pytest.mark.parametrize("on_device", [True, False])
def test_splits_move_once_to_the_accelerator_when_asked(on_device: bool, tiny_mnist: TinyMNIST) -> None:
    """With a Trainer on an accelerator, the uint8 splits live there and batches are cut there; the
    "meta" device stands in for a GPU (same code path, no memory)."""
    from types import SimpleNamespace

    dm = MNISTDataModule(root=str(tiny_mnist[0]), val_size=16, batch_size=8, on_device=on_device)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("meta")), training=True)
    first = dm.train_dataloader()
    images, labels = next(iter(first))
    expected = "meta" if on_device else "cpu"
    assert images.device.type == labels.device.type == expected and images.dtype == torch.uint8
    assert images.shape == (8, 1, 28, 28)
    assert dm.train_dataloader().images is first.images  # moved once, reused by later loaders
