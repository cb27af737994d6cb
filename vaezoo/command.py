"""The ``vaezoo`` command's entry point: answers ``--help`` and ``--version`` at once, runs the rest.

``import lightning`` alone takes 4-6 s on a 2-core machine (it imports torchmetrics, which imports
torchvision's model zoo), so the overview below is printed before anything heavy is imported.
Every subcommand's own options come from LightningCLI: ``vaezoo fit --help``.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

HELP = """\
usage: vaezoo [-h] [--version] {fit,validate,test,predict,variants,compare,compress,decompress} ...

vaezoo: train, compare and extend variational autoencoders on PyTorch Lightning.

subcommands:
  fit        Train a model, validating as it goes:
               vaezoo fit --config configs/mnist_mlp.yaml
  validate   One pass over the validation split (ELBO in nats per image, bits per dimension).
  test       One pass over the test split, with the importance-weighted NLL:
               vaezoo test --config configs/mnist_mlp.yaml --ckpt_path runs/mnist_mlp/version_0/checkpoints/last.ckpt
  predict    Write encodings, reconstructions or samples of a trained model to files.
  variants   List the registered variants, nets, datasets, likelihoods and loggers, plugins included.
  compare    Compare runs (the metrics.csv and config.yaml every run keeps): a table and a curves PNG.
               vaezoo compare runs/mnist_mlp/version_0 runs/mnist_beta/version_0
  compress   Compress images with a trained model into one .vzc file: lossless by bits-back coding at
             close to the model's -ELBO, or --lossy:
               vaezoo compress --ckpt_path runs/mnist_mlp/version_0/checkpoints/last.ckpt --split test -o test.vzc
  decompress Write a .vzc file's images back as PNGs, bit-exact for lossless files:
               vaezoo decompress test.vzc -o test_images/

options:
  -h, --help  Show this help message and exit.
  --version   Print the versions of vaezoo, torch, Lightning and jsonargparse, and exit.

Each subcommand has its own help, with every option of the model, data and trainer:
  vaezoo fit --help                      (slower: it imports torch and Lightning)
  vaezoo fit --config configs/mnist_mlp.yaml --print_config
Docs: docs/ in the repository (models, data, evaluation, tracking, scaling, performance, troubleshooting).
"""


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def main(args: list[str] | None = None) -> None:
    """Entry point of ``vaezoo`` and ``python -m vaezoo``.

    Args:
        args: Command-line arguments; ``None`` reads ``sys.argv``.
    """
    argv = sys.argv[1:] if args is None else list(args)
    # `python -m vaezoo` imports from the working directory, so a class path such as
    # --model my_vaes.FreeBitsVAE finds ./my_vaes.py; the console script's sys.path[0] is its bin/
    # folder instead. Appended, not prepended: a stray ./yaml.py or ./torch.py shadows nothing.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    if argv in ([], ["-h"], ["--help"]):
        print(HELP, end="")
        return
    if argv == ["--version"]:
        from vaezoo import __version__

        others = ", ".join(f"{name} {_version(name)}" for name in ("torch", "lightning", "jsonargparse", "torchmetrics"))
        print(f"vaezoo {__version__} ({others})")
        return
    if argv[:1] == ["compare"]:  # reads run folders only: no torch (tests/test_compare.py checks)
        from vaezoo.compare import main as compare

        sys.exit(compare(argv[1:]))
    if argv[:1] in (["compress"], ["decompress"]):
        from vaezoo.compression.command import main as compression

        sys.exit(compression(argv))
    from vaezoo.cli import main as run  # the heavy part: torch, Lightning, every registered class

    run(args)  # None, as given: LightningCLI reads sys.argv itself
