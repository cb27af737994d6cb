"""The `folder` DataModule on tiny real image files (PNG, JPEG, BMP, WebP written by PIL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_bad_input import fails
from tests.test_cli import run_cli
from vaezoo.data import FolderDataModule
from vaezoo.data.folder import IMAGE_EXTENSIONS
from vaezoo.errors import VAEZooError
from vaezoo.registry import DATASETS

# One solid colour per class: it survives JPEG and WebP compression within a few levels.
COLOURS = {"ant": (200, 30, 30), "bee": (30, 200, 30), "cat": (30, 30, 200), "dog": (220, 220, 40)}
FORMATS = {"ant": "png", "bee": "jpg", "cat": "bmp", "dog": "webp"}


def write(path: Path, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as an image file, its format taken from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **({"quality": 95} if path.suffix in (".jpg", ".webp") else {}))
    return path


def solid(colour: tuple[int, int, int], h: int = 8, w: int = 8) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.uint8), (h, w, 3)).copy()


def classes_folder(root: Path, per_class: int = 5) -> Path:
    """root/<class>/<i>.<ext>, one format per class."""
    for name, colour in COLOURS.items():
        for i in range(per_class):
            write(root / name / f"{i}.{FORMATS[name]}", solid(colour))
    return root


def random_pngs(folder: Path, n: int, h: int = 8, w: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    for i, array in enumerate(arrays):
        write(folder / f"{i:03d}.png", array)
    return arrays


def module(root: Path, tmp_path: Path, **kwargs) -> FolderDataModule:
    kwargs = {"cache_dir": str(tmp_path / "cache"), "workers": 2, "batch_size": 4, **kwargs}
    return FolderDataModule(str(root), **kwargs)


def whole(dm: FolderDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of the three splits in file order, with labels (setup is run first)."""
    dm.setup()
    images, labels, _ = dm._whole_set()
    return images, labels


def test_registered_as_folder() -> None:
    assert DATASETS.get("folder") is FolderDataModule


def test_class_subfolders_become_labels_in_every_format(tmp_path: Path) -> None:
    dm = module(classes_folder(tmp_path / "pets"), tmp_path, image_size=8)
    images, labels = whole(dm)
    assert dm.classes == tuple(sorted(COLOURS)) and dm.num_classes == 4
    assert images.shape == (20, 3, 8, 8) and images.dtype == torch.uint8
    for label, name in enumerate(dm.classes):
        mine = images[labels == label].float()
        assert len(mine) == 5
        # each class's images have its colour (JPEG/WebP within a few levels)
        assert (mine.mean(dim=(2, 3)) - torch.tensor(COLOURS[name])).abs().max() < 6, name


def test_no_subfolders_is_one_class(tmp_path: Path) -> None:
    arrays = random_pngs(tmp_path / "flat", 6)
    images, labels = whole(module(tmp_path / "flat", tmp_path, val_fraction=0.0, test_fraction=0.0))
    assert labels.tolist() == [0] * 6
    # PNG is lossless and no image_size keeps the size: the pixels come back exactly, in file order
    assert torch.equal(images, torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2))


def test_split_folders_are_the_splits(tmp_path: Path) -> None:
    root = tmp_path / "split"
    random_pngs(root / "train" / "a", 6)
    random_pngs(root / "train" / "b", 4, seed=1)
    random_pngs(root / "val" / "a", 3, seed=2)
    random_pngs(root / "test" / "b", 2, seed=3)
    random_pngs(root / "extra", 1, seed=4)
    dm = module(root, tmp_path)
    with pytest.warns(UserWarning, match=r"1 images lie outside them \(e.g. extra/000.png\) and are not used"):
        dm.setup("fit")
    assert dm.classes == ("a", "b")
    assert {s: len(dm._splits[s][0]) for s in ("train", "val", "test")} == {"train": 10, "val": 3, "test": 2}
    # labels are shared over the split folders: b is 1 in test/ as in train/
    assert dm._splits["val"][1].tolist() == [0] * 3 and dm._splits["test"][1].tolist() == [1] * 2


def test_missing_val_folder_is_carved_out_of_train(tmp_path: Path) -> None:
    root = tmp_path / "split"
    random_pngs(root / "train", 10)
    random_pngs(root / "test", 3, seed=1)
    dm = module(root, tmp_path, val_fraction=0.2)
    dm.setup("fit")
    assert {s: len(dm._splits[s][0]) for s in ("train", "val", "test")} == {"train": 8, "val": 2, "test": 3}


def test_seeded_fractions_split_the_folder(tmp_path: Path) -> None:
    random_pngs(tmp_path / "flat", 20)

    def rows(seed: int) -> dict[str, list[int]]:
        dm = module(tmp_path / "flat", tmp_path, val_fraction=0.25, test_fraction=0.15, seed=seed)
        dm.setup("fit")
        return {"train": dm.train_indices.tolist(), "val": dm.val_indices.tolist(), "test": dm.test_indices.tolist()}

    split = rows(0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [12, 5, 3]
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(20))  # disjoint and complete
    assert rows(0) == split and rows(1) != split


def test_resize_and_centre_crop_to_image_size(tmp_path: Path) -> None:
    # 40 wide, 20 high: red left quarter, green middle half, blue right quarter.
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :10, 0] = array[:, 10:30, 1] = array[:, 30:, 2] = 255
    write(tmp_path / "wide" / "a.png", array)
    write(tmp_path / "wide" / "b.png", np.zeros((30, 25, 3), dtype=np.uint8))  # another size: fine with image_size
    dm = module(tmp_path / "wide", tmp_path, image_size=10, val_fraction=0.0, test_fraction=0.0)
    assert dm.image_shape == (3, 10, 10)
    images, _ = whole(dm)
    assert images.shape == (2, 3, 10, 10)
    # shorter side 20 -> 10, so 20x10; the centre 10x10 is the green half, edges blurred by one pixel at most
    centre = images[0, :, :, 1:-1].float()
    assert centre[1].min() > 200 and centre[0].max() < 60 and centre[2].max() < 60


def test_grey_and_rgb_conversion(tmp_path: Path) -> None:
    write(tmp_path / "mixed" / "colour.png", solid((200, 100, 50)))
    write(tmp_path / "mixed" / "grey.png", np.full((8, 8), 77, dtype=np.uint8))
    grey, _ = whole(module(tmp_path / "mixed", tmp_path, channels=1, val_fraction=0.0, test_fraction=0.0))
    assert grey.shape == (2, 1, 8, 8)
    # ITU-R 601-2 luma, PIL's L conversion: 200*0.299 + 100*0.587 + 50*0.114 = 124.2
    assert grey[0].unique().tolist() == [124] and grey[1].unique().tolist() == [77]
    rgb, _ = whole(module(tmp_path / "mixed", tmp_path, channels=3, val_fraction=0.0, test_fraction=0.0))
    assert rgb.shape == (2, 3, 8, 8)
    assert rgb[0, :, 0, 0].tolist() == [200, 100, 50] and rgb[1].unique().tolist() == [77]


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "deep" / "half.png")  # 16-bit PNG
    for channels in (1, 3):
        images, _ = whole(module(tmp_path / "deep", tmp_path, channels=channels, val_fraction=0.0, test_fraction=0.0))
        assert images.unique().tolist() == [128]  # 32768 / 65535 * 255, not clipped to 255


def test_empty_folder_and_folder_without_images_name_folder_and_extensions(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no images here")
    for name in ("empty", "texts", "missing"):
        with pytest.raises(VAEZooError) as err:
            module(tmp_path / name, tmp_path).setup()
        assert str(tmp_path / name) in str(err.value)
        assert all(ext in str(err.value) for ext in IMAGE_EXTENSIONS)


def test_empty_folder_is_one_cli_error(tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    err = fails(capsys, "fit", "--data", "folder", "--data.root", str(tmp_path / "empty"), "--model.net", "conv")
    assert "no images found in" in err and ".webp" in err


def test_corrupt_and_truncated_images_are_warned_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "damaged"
    random_pngs(root, 6)
    good = write(tmp_path / "whole.jpg", np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "garbage.png").write_bytes(b"this is not a png")
    dm = module(root, tmp_path, val_fraction=0.0, test_fraction=0.0)
    with pytest.warns(UserWarning, match=r"skipped 2 of 8 images") as caught:
        images, _ = whole(dm)
    message = str(caught[0].message)
    assert "truncated.jpg" in message and "garbage.png" in message
    assert sorted(dm.skipped) == ["garbage.png", "truncated.jpg"] and len(images) == 6
    # from the cache, the same files stay out and are named again
    again = module(root, tmp_path, val_fraction=0.0, test_fraction=0.0)
    with pytest.warns(UserWarning, match="2 images .* skipped as unreadable"):
        assert torch.equal(whole(again)[0], images)
    assert again.decoded == 0


def test_mixed_sizes_without_image_size_say_to_set_it(tmp_path: Path, monkeypatch, capsys) -> None:
    random_pngs(tmp_path / "mixed", 3, h=8, w=8)
    random_pngs(tmp_path / "mixed" / "big", 2, h=12, w=10)
    with pytest.raises(VAEZooError, match=r"2 different sizes .*--data.image_size"):
        module(tmp_path / "mixed", tmp_path).image_shape  # noqa: B018 (the property reads the headers)
    monkeypatch.chdir(tmp_path)
    err = fails(capsys, "fit", "--data", "folder", "--data.root", str(tmp_path / "mixed"), "--model.net", "conv")
    assert "--data.image_size" in err


def test_cache_is_reused_on_the_second_setup(tmp_path: Path) -> None:
    classes_folder(tmp_path / "pets")
    first = module(tmp_path / "pets", tmp_path, image_size=8)
    first.prepare_data()
    first.setup("fit")
    assert first.decoded == 20 and first.cache_path is not None and first.cache_path.is_file()
    # written atomically: no temporary file is left beside the cache
    assert sorted(p.suffix for p in first.cache_path.parent.iterdir()) == [".json", ".npy"]
    second = module(tmp_path / "pets", tmp_path, image_size=8)
    second.setup("fit")
    assert second.decoded == 0 and second.cache_path == first.cache_path
    for split in ("train", "val", "test"):
        assert all(torch.equal(a, b) for a, b in zip(first._splits[split], second._splits[split]))


def test_cache_of_another_transform_or_changed_files_is_rebuilt(tmp_path: Path) -> None:
    arrays = random_pngs(tmp_path / "flat", 4)
    kw = {"val_fraction": 0.0, "test_fraction": 0.0}
    base = module(tmp_path / "flat", tmp_path, image_size=8, **kw)
    whole(base)
    for other in ({"image_size": 6}, {"image_size": 8, "channels": 1}):
        dm = module(tmp_path / "flat", tmp_path, **other, **kw)
        images, _ = whole(dm)
        assert dm.decoded == 4 and dm.cache_path != base.cache_path
        assert images.shape[1:] == (other.get("channels", 3), other["image_size"], other["image_size"])
    # a changed file changes the key: the new pixels are read, not the cached ones
    write(tmp_path / "flat" / "000.png", 255 - arrays[0])
    os.utime(tmp_path / "flat" / "000.png", ns=(1, 1))
    changed = module(tmp_path / "flat", tmp_path, image_size=8, **kw)
    images, _ = whole(changed)
    assert changed.decoded == 4
    assert torch.equal(images[0], torch.from_numpy(255 - arrays[0]).permute(2, 0, 1))
    # a cache whose header describes another transform is never read, even under its key's name
    meta = changed.cache_path.with_suffix(".json")
    header = json.loads(meta.read_text())
    meta.write_text(json.dumps({**header, "transform": {**header["transform"], "image_size": 5}}))
    again = module(tmp_path / "flat", tmp_path, image_size=8, **kw)
    whole(again)
    assert again.decoded == 4


def test_unwritable_cache_falls_back_to_memory_with_a_warning(tmp_path: Path) -> None:
    random_pngs(tmp_path / "flat", 5)
    blocker = tmp_path / "a_file"
    blocker.write_text("a file, not a folder")  # no folder can be made under it, even by root
    kw = {"cache_dir": str(blocker / "cache"), "val_fraction": 0.0, "test_fraction": 0.0}
    dm = module(tmp_path / "flat", tmp_path, **kw)
    with pytest.warns(UserWarning, match=r"cannot write the image cache .*--data.cache_dir"):
        images, _ = whole(dm)
    assert len(images) == 5 and dm.decoded == 5 and dm.cache_path is None
    dm.setup("test")  # the same instance keeps its decoded images
    assert dm.decoded == 5


def test_memory_mapped_batches_equal_in_memory_batches(tmp_path: Path) -> None:
    classes_folder(tmp_path / "pets")
    in_memory = module(tmp_path / "pets", tmp_path, image_size=8, memory_map=False)
    mapped = module(tmp_path / "pets", tmp_path, image_size=8, memory_map=True)
    in_memory.setup("fit")
    mapped.setup("fit")
    assert mapped.train_size == in_memory.train_size == 16
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        for (xa, ya), (xb, yb) in zip(getattr(in_memory, loader)(), getattr(mapped, loader)(), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_checkpoint_check_of_the_cli_skips_a_shape_known_only_per_instance(tmp_path: Path) -> None:
    # The CLI asks the data class, before building it, whether a checkpoint fits its images: a folder's shape
    # depends on its settings, so the class cannot say (and must not fail on its property).
    torch.save({"hyper_parameters": {"image_shape": (1, 28, 28)}}, tmp_path / "model.ckpt")
    assert FolderDataModule.checkpoint_mismatch(tmp_path / "model.ckpt") is None


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VAEZooError, match="image_size"):
        FolderDataModule(str(tmp_path), image_size=0)
    with pytest.raises(VAEZooError, match="leaves no training images"):
        FolderDataModule(str(tmp_path), val_fraction=0.5, test_fraction=0.5)


def test_fit_on_a_folder_through_the_cli(tmp_path: Path, monkeypatch, capsys) -> None:
    classes_folder(tmp_path / "pets", per_class=4)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(
        "fit", "--data", "folder", "--data.root", str(tmp_path / "pets"), "--data.image_size", "32",
        "--data.batch_size", "4", "--model.net", "conv", "--trainer.fast_dev_run", "true", capsys=capsys,
    )
    assert code == 0, err
    assert list((tmp_path / "xdg" / "vaezoo" / "folders").glob("folder_*.npy"))  # the default cache location
