#!/usr/bin/env bash
# GPU check for vaezoo, under 10 minutes: cifar_conv and mnist_mlp images/s at 32-true, 16-mixed and bf16-mixed,
# with --model.steps_per_call 1 and auto (the default), against a bare PyTorch loop on the same GPU (as the config
# writes it, and with vaezoo's fused optimiser step), peak GPU memory, and (with 2+ GPUs) a 2-process DDP fit.
#
#   bash benchmarks/gpu_check.sh                     # random CIFAR-shaped images
#   bash benchmarks/gpu_check.sh --data-dir DIR      # real CIFAR-10 under DIR (official or cifar-10/ mirror)
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# Without a CUDA GPU it prints "no GPU" and exits 0. It installs nothing and writes only into a
# temporary folder that it deletes at the end (logs, checkpoints, the CIFAR decode cache, caches).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON="python3"; fi
fi

if [[ "$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)" != "True" ]]; then
    echo "no GPU"
    exit 0
fi

tmp="$(mktemp -d -t vaezoo_gpu_check.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
# Everything that could write goes to the temp folder: bytecode, the CIFAR decode cache,
# matplotlib's font cache, torch/triton kernel caches, W&B (not used by the configs here).
export PYTHONDONTWRITEBYTECODE=1 XDG_CACHE_HOME="$tmp/cache" MPLCONFIGDIR="$tmp/mpl" \
    TORCHINDUCTOR_CACHE_DIR="$tmp/inductor" TRITON_CACHE_DIR="$tmp/triton" WANDB_MODE=disabled \
    WANDB_DIR="$tmp" PYTHONPATH="$here:$repo${PYTHONPATH:+:$PYTHONPATH}"
cd "$tmp"  # Lightning's default folders, if any, land here

"$PYTHON" - <<'EOF'
import torch
n = torch.cuda.device_count()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(n)))
EOF

echo
echo "== cifar_conv and mnist_mlp: images/s and peak memory, bare loop vs vaezoo (one GPU) =="
timeout 420 "$PYTHON" "$here/gpu_throughput.py" "$@"

echo
gpus="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
if (( gpus < 2 )); then
    echo "== DDP: skipped ($gpus GPU; needs 2) =="
    exit 0
fi
echo "== DDP: vaezoo fit on 2 GPUs (strategy ddp, 20 steps and 2 validation batches per process) =="
data_args=(--data.class_path gpu_throughput.RandomCIFAR)
if [[ "${1:-}" == "--data-dir" && -n "${2:-}" ]]; then data_args=(--data.root "$2"); fi
start=$SECONDS
if timeout 150 "$PYTHON" -m vaezoo fit --config "$repo/configs/cifar_conv.yaml" "${data_args[@]}" \
    --trainer.accelerator gpu --trainer.devices 2 --trainer.strategy ddp \
    --trainer.max_epochs 1 --trainer.limit_train_batches 20 --trainer.limit_val_batches 2 \
    --trainer.enable_progress_bar false --trainer.enable_model_summary false \
    --trainer.default_root_dir "$tmp/ddp" --trainer.logger.init_args.save_dir "$tmp/ddp" \
    >"$tmp/ddp.log" 2>&1 && ls "$tmp"/ddp/cifar_conv/version_*/checkpoints/last.ckpt >/dev/null 2>&1; then
    echo "DDP 2 processes: OK ($((SECONDS - start)) s, checkpoint written)"
else
    echo "DDP 2 processes: FAILED ($((SECONDS - start)) s); last lines of its log:"
    tail -n 25 "$tmp/ddp.log"
fi
