"""vaezoo compress beside the formats people use, on the same images: bits per dimension, the gap to the
model's own -ELBO, speed; and a lossy rate-distortion curve on CIFAR-10 beside JPEG and WebP.

    python benchmarks/compression.py --data ../shared/data \\
        --binary vanilla=runs/mnist_mlp/version_0/checkpoints/last.ckpt vamp=runs/mnist_vamp/.../last.ckpt \\
        --gray conv=runs/mnist8/.../last.ckpt --cifar conv=runs/cifar_conv/.../last.ckpt \\
        --out compression.json --plot docs/compression_rd.png

Images: each model's own test split, read by its checkpoint's DataModule (what its test ELBO measures):
MNIST binarised once with the DataModule's fixed seed (``--binary`` models), 8-bit MNIST (``--gray``),
and the first ``--cifar-images`` CIFAR-10 test images (``--cifar``). Baselines code the same pixels:
PNG (Pillow, optimize; 1-bit for binary images), WebP lossless (method 6), JPEG-XL lossless (effort 9,
pillow-jxl-plugin, where installed), one file per image; gzip, bz2 and lzma (level 9) on all raw pixel
bytes at once (one byte per sub-pixel). vaezoo's rate is its coded words with the clean bits; the file
column adds the header. "-ELBO" is the model's test -ELBO on the same images, the mean of 8
single-sample estimates. Speeds are images per second on one process (vaezoo codes on its default one
thread). Lossy, on the CIFAR-10 images: vaezoo ``--lossy`` at each of ``--qualities``, JPEG and WebP at
their quality settings, each both one file per image (headers included, as stored) and all images as the
tiles of one mosaic (headers paid once: the codecs themselves); bits per pixel, PSNR (mean over images)
and SSIM (torchmetrics). MS-SSIM is not reported: its 5 scales need images of at least 161 pixels a side.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import json
import lzma
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_vs_bare import mnist_root  # noqa: E402

try:
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    HAVE_JXL = True
except ImportError:
    HAVE_JXL = False


def _pil(image: np.ndarray, binary: bool, fmt: str) -> Image.Image:
    """(C, H, W) uint8 -> a PIL image; binary 0/1 images as 0/255 grey, and 1-bit for PNG."""
    if binary:
        grey = Image.fromarray((image[0] * 255).astype(np.uint8))
        return grey.convert("1") if fmt == "PNG" else grey
    return Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def baselines(pixels: np.ndarray, binary: bool) -> list[dict[str, Any]]:
    """Lossless baselines on uint8 pixels ``(N, C, H, W)`` (0/1 where ``binary``)."""
    dims = pixels.size
    rows = []
    per_image = [("PNG (optimised" + (", 1-bit)" if binary else ")"), "PNG", {"optimize": True}),
                 ("WebP lossless", "WEBP", {"lossless": True, "quality": 100, "method": 6})]
    if HAVE_JXL:
        per_image.append(("JPEG-XL lossless", "JXL", {"lossless": True, "effort": 9}))
    for name, fmt, options in per_image:
        started = time.perf_counter()
        size = sum(len(_encode(_pil(image, binary, fmt), fmt, **options)) for image in pixels)
        rows.append({"format": name, "bits_per_dim": 8 * size / dims, "compress_per_s": len(pixels) / (time.perf_counter() - started)})
    raw = np.ascontiguousarray(pixels).tobytes()
    for name, pack in (("gzip -9", lambda b: gzip.compress(b, 9)), ("bz2 -9", lambda b: bz2.compress(b, 9)),
                       ("lzma -9", lambda b: lzma.compress(b, preset=9))):
        started = time.perf_counter()
        size = len(pack(raw))
        rows.append({"format": f"{name} (raw bytes)", "bits_per_dim": 8 * size / dims,
                     "compress_per_s": len(pixels) / (time.perf_counter() - started)})
    return rows


def neg_elbo_bits_per_dim(model: Any, x: torch.Tensor, samples: int = 8) -> float:
    torch.manual_seed(0)
    with torch.inference_mode():
        total = sum(-model(x[i:i + 1000]).elbo.double().sum().item() for _ in range(samples) for i in range(0, len(x), 1000))
    return total / samples / (x.numel() * math.log(2))


def vaezoo_row(name: str, ckpt: str, x: torch.Tensor, precision: int) -> dict[str, Any]:
    from vaezoo.compression import compress, decompress
    from vaezoo.compression.command import load_model

    model = load_model(ckpt).eval()
    elbo = neg_elbo_bits_per_dim(model, x)
    started = time.perf_counter()
    packed = compress(model, x, latent_precision=precision, checkpoint=ckpt)
    compress_s = time.perf_counter() - started
    started = time.perf_counter()
    back, _ = decompress(packed.data, model)
    decompress_s = time.perf_counter() - started
    assert torch.equal(back, x), "round trip not exact"
    r = packed.report
    return {"format": f"vaezoo, {name} (latent precision {precision})", "bits_per_dim": r["bits_per_dim"],
            "steady_bits_per_dim": r["steady_bits_per_dim"], "file_bits_per_dim": r["file_bits_per_dim"],
            "neg_elbo_bits_per_dim": elbo, "gap": r["bits_per_dim"] / elbo - 1, "clean_bits": r["clean_bits"],
            "compress_per_s": len(x) / compress_s, "decompress_per_s": len(x) / decompress_s, "exact": True}


def lossless_table(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"\n### {title}\n", "| format | bits/dim | file bits/dim | -ELBO bits/dim | gap | compress img/s | decompress img/s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["bits_per_dim"]):
        gap = f"{r['gap']:+.2%}" if "gap" in r else ""
        elbo = f"{r['neg_elbo_bits_per_dim']:.4f}" if "neg_elbo_bits_per_dim" in r else ""
        file_bpd = f"{r['file_bits_per_dim']:.4f}" if "file_bits_per_dim" in r else ""
        dec = f"{r['decompress_per_s']:,.0f}" if "decompress_per_s" in r else ""
        lines.append(f"| {r['format']} | {r['bits_per_dim']:.4f} | {file_bpd} | {elbo} | {gap} | {r['compress_per_s']:,.0f} | {dec} |")
    return "\n".join(lines)


def rate_distortion(ckpt: str, x: torch.Tensor, qualities: list[float]) -> list[dict[str, Any]]:
    """vaezoo --lossy at each quality, JPEG and WebP at theirs: bits per pixel, PSNR and SSIM on the same images."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    from vaezoo.compression import compress, decompress
    from vaezoo.compression.command import load_model

    def scores(back: torch.Tensor) -> dict[str, float]:
        mse = ((back - x) ** 2).flatten(1).mean(1)
        return {"psnr": (10 * torch.log10(1 / mse.clamp(min=1e-10))).mean().item(),
                "ssim": ssim(back, x, data_range=1.0).item()}

    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    model = load_model(ckpt).eval()
    rows = []
    for quality in qualities:
        packed = compress(model, x, lossy_mode=True, quality=quality)
        back, _ = decompress(packed.data, model)
        rows.append({"codec": "vaezoo", "setting": quality, "bpp": packed.report["bits_per_pixel"],
                     "file_bpp": 8 * len(packed.data) / pixels, **scores(back)})
    uint8 = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    n, h, w, _ = uint8.shape
    cols = math.ceil(math.sqrt(n))
    rows_of_tiles = math.ceil(n / cols)
    mosaic = np.zeros((rows_of_tiles * h, cols * w, 3), dtype=np.uint8)  # every image a tile, the rest black
    for i, image in enumerate(uint8):
        mosaic[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = image
    for codec, fmt, settings in (("JPEG", "JPEG", [5, 10, 20, 30, 50, 70, 90]), ("WebP", "WEBP", [0, 5, 10, 25, 50, 75, 90])):
        options = {"optimize": True} if fmt == "JPEG" else {"method": 6}
        for q in settings:
            # One file per image: what storing them costs, headers (about 600 bytes for JPEG) included ...
            size, outs = 0, []
            for image in uint8:
                data = _encode(Image.fromarray(image), fmt, quality=q, **options)
                size += len(data)
                outs.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            back = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2).float() / 255
            rows.append({"codec": f"{codec}, one file per image", "setting": q, "bpp": 8 * size / pixels,
                         "file_bpp": 8 * size / pixels, **scores(back)})
            # ... and all images as tiles of one mosaic (32 is a multiple of the 8x8 and 16x16 blocks): the
            # headers paid once, the fair comparison of the codecs themselves.
            data = _encode(Image.fromarray(mosaic), fmt, quality=q, **options)
            decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            tiles = np.stack([decoded[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] for i in range(n)])
            back = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
            rows.append({"codec": f"{codec}, one mosaic", "setting": q, "bpp": 8 * len(data) / pixels,
                         "file_bpp": 8 * len(data) / pixels, **scores(back)})
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for codec, style in (("vaezoo", "o-"), ("JPEG, one mosaic", "s--"), ("WebP, one mosaic", "^--"),
                         ("JPEG, one file per image", "s:"), ("WebP, one file per image", "^:")):
        pts = sorted((r["bpp"], r["psnr"]) for r in rows if r["codec"] == codec)
        ax.plot(*zip(*pts, strict=True), style, label=codec if codec != "vaezoo" else "vaezoo --lossy (cifar_conv)")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR (dB), mean over images")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def _named(specs: list[str]) -> list[tuple[str, str]]:
    return [tuple(s.split("=", 1)) if "=" in s else (Path(s).stem, s) for s in specs]  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="Holds MNIST/raw/*.gz and cifar-10/.")
    parser.add_argument("--binary", nargs="*", default=[], help="name=checkpoint of models of binarised MNIST.")
    parser.add_argument("--gray", nargs="*", default=[], help="name=checkpoint of models of 8-bit MNIST.")
    parser.add_argument("--cifar", nargs="*", default=[], help="name=checkpoint of models of CIFAR-10.")
    parser.add_argument("--cifar-images", type=int, default=1000)
    parser.add_argument("--latent-precision", type=int, default=8)
    parser.add_argument("--qualities", type=float, nargs="*", default=[1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2])
    parser.add_argument("--out", type=Path, help="Write every row as JSON here.")
    parser.add_argument("--plot", type=Path, help="Write the CIFAR-10 rate-distortion plot (PNG) here.")
    args = parser.parse_args()

    from vaezoo.compression.command import _split_images

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; JPEG-XL: {'yes' if HAVE_JXL else 'pillow-jxl-plugin not installed'}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        mnist = mnist_root(args.data, Path(tmp)) if (args.binary or args.gray) else None
        for kind, specs, root in (("binarised MNIST", args.binary, mnist), ("8-bit MNIST", args.gray, mnist),
                                  ("CIFAR-10", args.cifar, args.data)):
            if not specs:
                continue
            rows: list[dict[str, Any]] = []
            x = None
            for name, ckpt in _named(specs):
                images = _split_images(ckpt, "test", str(root))
                images = images[:args.cifar_images] if kind == "CIFAR-10" else images
                if x is not None and not torch.equal(images, x):
                    raise SystemExit(f"{name}'s test images differ from the first model's: compare models of one dataset.")
                x = images
                rows.append(vaezoo_row(name, ckpt, x, args.latent_precision))
            assert x is not None
            binary = kind == "binarised MNIST"
            rows += baselines((x * (1 if binary else 255)).round().byte().numpy(), binary)
            results[kind] = rows
            print(lossless_table(f"{kind}: {len(x):,} test images, lossless", rows))
            if kind == "CIFAR-10" and args.qualities:
                rd = rate_distortion(_named(specs)[0][1], x, args.qualities)
                results["CIFAR-10 lossy"] = rd
                print("\n### CIFAR-10 lossy\n\n| codec | setting | bits per pixel | file bits per pixel | PSNR dB | SSIM |\n| --- | --- | --- | --- | --- | --- |")
                for r in rd:
                    print(f"| {r['codec']} | {r['setting']:g} | {r['bpp']:.3f} | {r['file_bpp']:.3f} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
                if args.plot:
                    plot(rd, args.plot, f"CIFAR-10, {len(x):,} test images")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
