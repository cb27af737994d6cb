"""One training epoch of pythae's VAE (its TrainingPipeline, as its users run it), timed: for epoch_vs_bare.py.

Run with a Python that has pythae (``python -m venv pyvenv && pyvenv/bin/pip install torch==2.14.1 pythae``;
it is not a vaezoo dependency). The model is pythae's default MLP for 1x28x28 images (784-512-z, ReLU,
BCE reconstruction): the peers' MLP that ``benchmarks/mlp512.yaml`` writes for vaezoo. The data are the
first ``--images`` MNIST training images, binarised once with a fixed seed (pythae has no per-step
binarisation), batch ``--batch-size``, Adam at 1e-3, no evaluation set. Two epochs run; the second is
timed from pythae's ``on_epoch_begin`` to its ``on_epoch_end`` callback (the first is the warm-up).
Prints ``EPOCH <wall seconds> <process CPU seconds>``.
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="Holds MNIST/raw/train-images-idx3-ubyte.gz.")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 keeps torch's default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from pythae.models import VAE, VAEConfig
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    with gzip.open(args.data_dir / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") as f:
        grey = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[: args.images]
    rng = np.random.default_rng(0)
    binary = (rng.random(grey.shape) < grey / 255).astype(np.float32)

    class Timer(TrainingCallback):
        def __init__(self) -> None:
            self.epochs: list[tuple[float, float]] = []

        def on_epoch_begin(self, training_config, **kwargs) -> None:  # noqa: ANN001 (pythae's signature)
            self.start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, training_config, **kwargs) -> None:  # noqa: ANN001
            self.epochs.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    timer = Timer()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as out:
        config = BaseTrainerConfig(output_dir=out, per_device_train_batch_size=args.batch_size, num_epochs=2,
                                   learning_rate=1e-3, no_cuda=True)
        model = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=args.latent_dim, reconstruction_loss="bce"))
        TrainingPipeline(training_config=config, model=model)(train_data=binary, callbacks=[timer])
    wall, cpu = timer.epochs[-1]
    print(f"EPOCH {wall:.6f} {cpu:.6f}")


if __name__ == "__main__":
    main()
