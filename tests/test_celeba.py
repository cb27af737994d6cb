"""CelebA: torchvision's real reader on tiny files written in the official layout, the 148-pixel crop, the
official partition, the decode cache, and errors that name the layout."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.datasets import CelebA

from vaezoo.data import CelebADataModule
from vaezoo.errors import VAEZooError

# The 40 attribute names of list_attr_celeba.txt, in the official order.
ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()
INNER, OUTER = (200, 40, 90), (10, 220, 30)  # colours inside and outside the central 148x148 square


def celeba_colour(index: int) -> tuple[int, int, int]:
    """The flat colour of the central 148x148 square of image ``index`` (0-based): distinct per image."""
    return INNER[0] - 3 * index, INNER[1] + 5 * index, INNER[2]


def write_celeba(
    root: Path, n_train: int = 8, n_val: int = 4, n_test: int = 4, as_zip: bool = False
) -> dict[str, str]:
    """Write CelebA's official layout under ``root/celeba/``: 178x218 JPEGs and the five text files.

    Image ``i`` (``{i + 1:06d}.jpg``) is :func:`celeba_colour` inside its central 148x148 square and
    ``OUTER`` around it, so the crop shows in the pixels; its attributes are ``+1`` for ``Male`` when
    ``i`` is odd (``-1`` otherwise) and ``-1`` for the rest. The partition lists the training images
    first, then validation, then test, as the official file does.

    Args:
        root: The dataset root (what ``--data.root`` would be).
        n_train: Training images (partition 0).
        n_val: Validation images (partition 1).
        n_test: Test images (partition 2).
        as_zip: Write the images as ``img_align_celeba.zip`` (stored) instead of the extracted folder.

    Returns:
        md5 of every written file by name, for :func:`patch_celeba_md5s`.
    """
    folder = Path(root) / "celeba"
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    n = n_train + n_val + n_test
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        picture = Image.new("RGB", (178, 218), OUTER)  # width 178, height 218, as the aligned faces
        picture.paste(celeba_colour(i), (15, 35, 15 + 148, 35 + 148))  # the central square
        picture.save(images / name, "JPEG", quality=95)
    partition = [0] * n_train + [1] * n_val + [2] * n_test
    male = ATTRIBUTES.index("Male")
    texts = {
        "list_eval_partition.txt": "".join(f"{name} {p}\n" for name, p in zip(names, partition)),
        "identity_CelebA.txt": "".join(f"{name} {i % 3 + 1}\n" for i, name in enumerate(names)),
        "list_attr_celeba.txt": f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "".join(
            f"{name} " + " ".join("1" if a == male and i % 2 else "-1" for a in range(40)) + "\n"
            for i, name in enumerate(names)
        ),
        "list_bbox_celeba.txt": f"{n}\nimage_id x_1 y_1 width height\n"
        + "".join(f"{name} 95 71 226 313\n" for name in names),
        "list_landmarks_align_celeba.txt": f"{n}\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
        "leftmouth_x leftmouth_y rightmouth_x rightmouth_y\n"
        + "".join(f"{name} 69 109 106 113 77 142 73 152 108 154\n" for name in names),
    }
    for name, text in texts.items():
        (folder / name).write_text(text)
    if as_zip:
        with zipfile.ZipFile(folder / "img_align_celeba.zip", "w", compression=zipfile.ZIP_STORED) as archive:
            for name in names:
                archive.write(images / name, f"img_align_celeba/{name}")
        for name in names:
            (images / name).unlink()
        images.rmdir()
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir() if path.is_file()}


def patch_celeba_md5s(monkeypatch: pytest.MonkeyPatch, md5s: dict[str, str]) -> None:
    """Point torchvision's CelebA md5 table at the tiny files, so its real integrity check runs on them."""
    table = [(file_id, md5s.get(name, md5), name) for file_id, md5, name in CelebA.file_list]
    monkeypatch.setattr(CelebA, "file_list", table)


@pytest.fixture
def tiny_celeba(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A root with 8 train / 4 val / 4 test CelebA images in the official layout; the cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    patch_celeba_md5s(monkeypatch, write_celeba(tmp_path / "data"))
    return tmp_path / "data"


def test_reads_the_official_partition_cropped_and_resized(tiny_celeba: Path) -> None:
    dm = CelebADataModule(root=str(tiny_celeba), batch_size=4, download=False)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    (train, train_y), (val, val_y), (test, test_y) = (dm._splits[s] for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (8, 4, 4)  # the partition file's splits, not a seeded carve-out
    assert train.dtype == torch.uint8 and train.shape == (8, 3, 64, 64) and dm.image_shape == (3, 64, 64)
    # The 148-pixel centre crop keeps only the inner square: inside a 3-pixel rim (where JPEG blurs the square's
    # edge) every pixel is near that image's colour. Without the crop the outer colour would fill 5 pixels a side.
    for i, image in enumerate(torch.cat([train, val, test])):
        expected = torch.tensor(celeba_colour(i), dtype=torch.float32).view(3, 1, 1)
        assert (image[:, 3:-3, 3:-3].float() - expected).abs().max() <= 12, i
    assert torch.equal(torch.cat([train_y, val_y, test_y]), torch.arange(16) % 2)  # Male, mapped to {0, 1}
    assert train_y.dtype == torch.int64


def test_image_size_sets_the_shape_and_the_model_follows(
    tiny_celeba: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import run_cli

    monkeypatch.chdir(tiny_celeba.parent)  # the pictures land in ./images
    dm = CelebADataModule(root=str(tiny_celeba), image_size=40, download=False)
    assert dm.image_shape == (3, 40, 40) and CelebADataModule.image_shape == (3, 64, 64)
    code, _, err = run_cli(
        "fit", "--data", "celeba", "--data.root", str(tiny_celeba), "--data.image_size", "40",
        "--data.download", "false", "--data.batch_size", "4", "--model.net", "conv",
        "--trainer.fast_dev_run", "true", "--trainer.logger", "false", capsys=capsys,
    )
    assert code == 0, err


def test_decoded_splits_are_cached_and_a_changed_image_is_decoded_again(
    tiny_celeba: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = CelebADataModule(root=str(tiny_celeba), download=False)
    first.prepare_data()
    assert len(list((tiny_celeba.parent / "cache" / "vaezoo").glob("celeba_*_64px_*.npy"))) == 3

    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although cached")

    with monkeypatch.context() as mp:
        mp.setattr(CelebADataModule, "_decode", no_decoding)
        second = CelebADataModule(root=str(tiny_celeba), download=False)
        second.setup("fit")
    torch.testing.assert_close(second._splits["train"][0], first._cached("train", write=False)[0], rtol=0, atol=0)
    # A replaced image (new content and mtime): the cache key changes, and the new pixels are read.
    path = tiny_celeba / "celeba" / "img_align_celeba" / "000001.jpg"
    Image.new("RGB", (178, 218), (0, 0, 255)).save(path, "JPEG", quality=95)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    third = CelebADataModule(root=str(tiny_celeba), download=False)
    third.setup("fit")
    assert third._splits["train"][0][0, 2].float().mean() > 240  # blue now


def test_the_zip_is_extracted_offline_by_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    patch_celeba_md5s(monkeypatch, write_celeba(tmp_path, as_zip=True))
    with pytest.raises(VAEZooError, match="img_align_celeba.zip there is not extracted.*--data.download true"):
        CelebADataModule(root=str(tmp_path), download=False).prepare_data()
    dm = CelebADataModule(root=str(tmp_path), download=True)  # every md5 matches: nothing is fetched
    dm.prepare_data()
    dm.setup("fit")
    assert (tmp_path / "celeba" / "img_align_celeba" / "000008.jpg").is_file() and len(dm._splits["train"][0]) == 8


@pytest.mark.parametrize("download", [False, True])
def test_missing_files_name_the_official_layout(tmp_path: Path, download: bool) -> None:
    with pytest.raises(VAEZooError) as info:
        CelebADataModule(root=str(tmp_path), download=download).prepare_data()
    message = str(info.value)
    assert f"{tmp_path / 'celeba'}/ holding" in message
    for name in ("img_align_celeba/", "list_eval_partition.txt", "list_attr_celeba.txt", "identity_CelebA.txt",
                 "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt"):
        assert name in message, name
    assert "mmlab.ie.cuhk.edu.hk" in message and "--data.root" in message
    # Offline tests: without gdown, or with it and no network, the reason is named.
    assert ("download is off" in message) if not download else ("gdown" in message or "Google Drive" in message)


def test_a_damaged_text_file_is_named(tiny_celeba: Path) -> None:
    with open(tiny_celeba / "celeba" / "list_attr_celeba.txt", "a") as file:
        file.write("garbage\n")
    with pytest.raises(VAEZooError, match=r"md5 check.*: list_attr_celeba.txt"):
        CelebADataModule(root=str(tiny_celeba), download=False).prepare_data()


def test_an_unknown_label_lists_the_attributes(tiny_celeba: Path) -> None:
    with pytest.raises(VAEZooError, match="'Beard' is not a column.*No_Beard.*Young"):
        CelebADataModule(root=str(tiny_celeba), download=False, label="Beard").setup("fit")


def test_a_missing_image_is_named(tiny_celeba: Path) -> None:
    (tiny_celeba / "celeba" / "img_align_celeba" / "000003.jpg").unlink()
    with pytest.raises(VAEZooError, match="000003.jpg is listed in list_eval_partition.txt"):
        CelebADataModule(root=str(tiny_celeba), download=False).prepare_data()


def test_image_size_must_be_positive() -> None:
    with pytest.raises(VAEZooError, match="image_size"):
        CelebADataModule(image_size=0)



def test_a_checkpoint_of_any_celeba_size_passes_the_shape_check(tmp_path: Path) -> None:
    # The CLI checks a --ckpt_path's image shape against the data class before building anything; CelebA's
    # shape is a setting (image_size), so a 128x128 checkpoint must not be refused for the class's 64x64.
    for shape, refused in (((3, 128, 128), False), ((3, 64, 64), False), ((1, 28, 28), True)):
        path = tmp_path / f"{shape[-1]}.ckpt"
        torch.save({"hyper_parameters": {"image_shape": shape}, "datamodule_hyper_parameters": {}}, path)
        message = CelebADataModule.checkpoint_mismatch(path)
        assert (message is not None) == refused, shape
        if refused:
            assert "1x28x28 images" in message
