"""``vaezoo compress`` and ``vaezoo decompress``: image files, folders or a DataModule split to one ``.vzc`` file and back.

    vaezoo compress --ckpt_path runs/mnist_mlp/version_0/checkpoints/last.ckpt --split test -o mnist_test.vzc
    vaezoo compress --ckpt_path M.ckpt photos/ -o photos.vzc --lossy --quality 2
    vaezoo decompress mnist_test.vzc -o mnist_test/
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

PROG = "vaezoo"

def _compress_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} compress", allow_abbrev=False,
        description="Compress images with a trained model into one .vzc file: lossless by bits-back coding (BB-ANS, "
                    "Townsend et al. 2019) at close to the model's -ELBO, or lossy (--lossy). Prints the rate in bits "
                    "per dimension (lossless) or bits per pixel (lossy). See docs/compression.md.")
    p.add_argument("inputs", nargs="*", help="Image files (PNG, JPEG, BMP, WebP) and folders of them (searched recursively).")
    p.add_argument("--ckpt_path", required=True, help="The trained model's checkpoint (.ckpt).")
    p.add_argument("-o", "--output", required=True, help="The .vzc file to write (refused if it exists, unless --force).")
    p.add_argument("--split", choices=("val", "test"), help="Compress this split of the checkpoint's own DataModule "
                   "(the images its val/test metrics were measured on) instead of files.")
    p.add_argument("--data_root", help="With --split: where the data is, if not where the model was trained from.")
    p.add_argument("--limit", type=int, help="Compress only the first N images.")
    p.add_argument("--lossy", action="store_true", help="Lossy: quantised posterior means, decoded to the decoder's mean.")
    p.add_argument("--quality", type=float, default=1.0, help="Lossy: the quantisation step is the posterior's standard "
                   "deviation / quality; higher means more bits and less distortion (default 1).")
    p.add_argument("--latent_precision", type=int, default=8, help="Lossless: bits per latent dimension, 2**p "
                   "buckets (default 8).")
    p.add_argument("--latent_scale", type=float, default=2.0, help="Lossless: the buckets have equal mass under "
                   "N(0, scale^2) (default 2; 1 is the BB-ANS paper's grid, whose wide tail buckets cost 6.7%% on the "
                   "CIFAR-10 recipe).")
    p.add_argument("--chunk", type=int, default=256, help="Lossless: images per network pass (default 256).")
    p.add_argument("--threads", type=int, default=1, help="Lossless: CPU threads the networks run on; recorded in "
                   "the file and used again by decompress, as the networks' last bits can depend on it (default 1).")
    p.add_argument("--force", action="store_true", help="Overwrite the output file.")
    return p


def _decompress_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} decompress", allow_abbrev=False,
        description="Decompress a .vzc file into PNG images, after checking the file's checksum, the model and this "
                    "machine. Lossless files give back the very pixels compressed.")
    p.add_argument("input", help="The .vzc file.")
    p.add_argument("-o", "--output", required=True, help="The folder to write the PNG images into (created if needed).")
    p.add_argument("--ckpt_path", help="The model's checkpoint; by default the one the file was compressed with.")
    p.add_argument("--force", action="store_true", help="Overwrite images that exist in the output folder.")
    return p


def load_model(path: str) -> Any:
    """The model of a checkpoint (any variant: the checkpoint names its class), on the CPU."""
    from vaezoo import checkpoints
    from vaezoo.models.base import VAE

    checkpoints.check_file(Path(path), keywords=False)
    return VAE.load_from_checkpoint(path, map_location="cpu", weights_only=True)


def _image_files(inputs: list[str]) -> list[tuple[Path, str]]:
    """(file, stored name) of every image: a folder's images by their path inside it, in sorted order."""
    from vaezoo.data.folder import IMAGE_EXTENSIONS  # the folder DataModule's: the same files count as images
    from vaezoo.errors import VAEZooError

    found: list[tuple[Path, str]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise VAEZooError(f"{path} holds no image ({', '.join(IMAGE_EXTENSIONS)}); nothing to compress.")
            found += [(p, p.relative_to(path).as_posix()) for p in files]
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise VAEZooError(f"{path} does not exist; give image files or folders.")
    names = [name for _, name in found]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[:3]
        raise VAEZooError(f"two inputs would decompress to the same name ({', '.join(twice)}); give them in one folder "
                          "or rename them.")
    return found


def _read_images(files: list[tuple[Path, str]], shape: tuple[int, int, int]) -> Any:
    """The images as one uint8 tensor ``(N, C, H, W)``, each checked against the model's shape."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from vaezoo.errors import VAEZooError

    channels, height, width = shape
    lossless_modes = {1: ("L", "1"), 3: ("RGB", "P", "L", "1")}[channels]
    out = np.empty((len(files), height, width, channels), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                if image.mode not in lossless_modes:
                    raise VAEZooError(f"{path} is a {image.mode} image and the model takes "
                                      f"{'grey' if channels == 1 else 'RGB'} images: converting would change it. "
                                      f"Convert it yourself first, or use a model for {image.mode} images.")
                if image.size != (width, height):
                    raise VAEZooError(f"{path} is {image.size[0]}x{image.size[1]} and the model takes {width}x{height}: "
                                      "resize the images first, or use a model trained at that size.")
                pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise VAEZooError(f"{path} cannot be read as an image ({err}); remove it or replace it.") from None
        out[i] = pixels.reshape(height, width, channels)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _split_images(ckpt: str, split: str, root: str | None) -> Any:
    """The images of the checkpoint's DataModule's ``split``, float in [0, 1], as its metrics saw them."""
    import torch

    from vaezoo.errors import VAEZooError
    from vaezoo.introspect import import_object

    saved = torch.load(ckpt, map_location="cpu", weights_only=True).get("datamodule_hyper_parameters")
    if not saved or "_class_path" not in saved:
        raise VAEZooError(f"{ckpt} does not record its DataModule's class (it was not trained with vaezoo fit): give "
                          "image files or folders instead of --split.")
    kwargs = {k: v for k, v in saved.items() if not k.startswith("_")}
    if root is not None:
        kwargs["root"] = root
    datamodule = import_object(saved["_class_path"])(**kwargs)
    datamodule.prepare_data()
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    return torch.cat([datamodule.on_after_batch_transfer(batch, 0)[0].cpu() for batch in loader])


def compress_main(argv: list[str]) -> int:
    from vaezoo.compression import compress
    from vaezoo.compression.container import write
    from vaezoo.errors import VAEZooError

    args = _compress_parser().parse_args(argv)
    if bool(args.inputs) == bool(args.split):
        raise VAEZooError("give image files or folders, or --split val|test, (one of the two) to compress.")
    if args.limit is not None and args.limit < 1:
        raise VAEZooError(f"--limit must be >= 1, got {args.limit}.")
    output = Path(args.output)
    if output.exists() and not args.force:  # before the slow part
        raise VAEZooError(f"{output} exists; vaezoo compress does not overwrite files. Choose another -o, or pass --force.")
    model = load_model(args.ckpt_path)
    if args.split:
        images, names = _split_images(args.ckpt_path, args.split, args.data_root), None
    else:
        files = _image_files(args.inputs)[:args.limit]
        images, names = _read_images(files, tuple(model.image_shape)), [name for _, name in files]
    images = images[:args.limit]
    packed = compress(model, images, lossy_mode=args.lossy, quality=args.quality, latent_precision=args.latent_precision,
                      latent_scale=args.latent_scale,
                      chunk=args.chunk, coding_threads=args.threads, checkpoint=args.ckpt_path, names=names)
    write(output, packed.data, force=args.force)
    r = packed.report
    print(f"vaezoo: compressed {r['images']:,} images ({'x'.join(map(str, model.image_shape))}) into {output} "
          f"({r['file_bytes']:,} bytes) in {r['seconds']:.1f} s, {r['images'] / r['seconds']:,.0f} images/s")
    if r["mode"] == "lossless":
        print(f"  lossless (bits-back): {r['bits_per_dim']:.4f} bits/dim ({r['steady_bits_per_dim']:.4f} without the "
              f"{r['clean_bits']} clean bits; {r['file_bits_per_dim']:.4f} with the header)")
    else:
        print(f"  lossy (quality {args.quality:g}): {r['bits_per_pixel']:.4f} bits per pixel, PSNR {r['psnr_db']:.2f} dB "
              "(mean over images)")
    return 0


def decompress_main(argv: list[str]) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from vaezoo.compression import container
    from vaezoo.compression.api import decode
    from vaezoo.errors import VAEZooError

    args = _decompress_parser().parse_args(argv)
    header, words = container.read(args.input)  # read and checked once
    ckpt = args.ckpt_path or header["model"].get("checkpoint")
    if not ckpt or not Path(ckpt).is_file():
        raise VAEZooError(f"{args.input} needs its model, the checkpoint {ckpt or '(not recorded)'}, which is not there: "
                          "pass --ckpt_path with that checkpoint (its weights are checked by their hash).")
    images = decode(header, words, load_model(ckpt), args.input)
    count = len(images)
    names = header.get("names") or [f"{i:0{len(str(count - 1))}d}" for i in range(count)]
    names = [str(Path(n).with_suffix(".png")) for n in names]
    out = Path(args.output)
    clashes = [n for n in names if (out / n).exists()]
    if clashes and not args.force:
        raise VAEZooError(f"{out} already holds {len(clashes)} of the images to write (e.g. {clashes[0]}); choose another "
                          "-o, or pass --force to overwrite them.")
    out.mkdir(parents=True, exist_ok=True)
    pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    # All images are written into a temporary folder beside the output, then moved in: an error part-way
    # (a full disk) leaves no partial set behind.
    with tempfile.TemporaryDirectory(dir=out, prefix=".vaezoo-decompress-") as tmp:
        for name, image in zip(names, pixels, strict=True):
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image)).save(target)
        for name in names:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / name), out / name)
    print(f"vaezoo: decompressed {count:,} images ({header['mode']}) from {args.input} into {out}/")
    return 0


def main(argv: list[str]) -> int:
    """``vaezoo compress ...`` or ``vaezoo decompress ...``; errors are one line on stderr and exit status 1."""
    from vaezoo.errors import VAEZooError

    command, rest = argv[0], argv[1:]
    try:
        return compress_main(rest) if command == "compress" else decompress_main(rest)
    except VAEZooError as err:
        print(f"{PROG} {command}: error: {err}", file=sys.stderr)
        return 1
