"""What every attached callback costs per training step, as ``vaezoo fit`` runs it.

    python benchmarks/callback_cost.py --config benchmarks/mlp512.yaml --subset 20000 --rounds 3

Runs ``vaezoo fit`` (validation off, one epoch of ``--subset`` images) under Lightning's
``SimpleProfiler`` (its public profiler: every callback hook is timed as
``[Callback]<state_key>.<hook>``), ``--rounds`` times, and prints per callback the median over the
rounds of its total time in the per-step hooks (``on_train_batch_start``, ``on_before_backward``,
``on_after_backward``, ``on_before_optimizer_step``, ``on_before_zero_grad``, ``on_train_batch_end``)
divided by the steps: microseconds per step, Lightning's dispatch included (the profiler's own
timing adds about a microsecond a call). Beside it, the whole step (``run_training_batch``).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from epoch_vs_bare import DEFAULT_DATA, mnist_root, quiet_named_warnings  # noqa: E402

STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
              "on_before_zero_grad", "on_train_batch_end")
ROW = re.compile(r"^\|\s*(?P<action>.+?)\s*\|\s*(?P<mean>[0-9.eE+-]+)\s*\|\s*(?P<calls>\d+)\s*\|\s*(?P<total>[0-9.eE+-]+)\s*\|")


def one_round(config: str, root: Path, subset: int, workdir: Path) -> tuple[dict[str, float], float, int]:
    from vaezoo.cli import main as vaezoo

    out = workdir / "profile"
    batches = subset // 128
    args = ["fit", "--config", config, "--data.root", str(root), "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "0", "--trainer.limit_train_batches", str(batches),
            "--trainer.enable_model_summary", "false", "--trainer.logger.init_args.save_dir", str(workdir / "runs"),
            "--trainer.profiler", "lightning.pytorch.profilers.SimpleProfiler",
            "--trainer.profiler.dirpath", str(out), "--trainer.profiler.filename", "perf"]
    argv, sys.argv = sys.argv, ["vaezoo"]  # the arguments come from the call, as from Python
    try:
        vaezoo(args)
    except SystemExit as exit_:
        if exit_.code:
            raise
    finally:
        sys.argv = argv
    text = (out / "fit-perf.txt").read_text()
    per_callback: dict[str, float] = defaultdict(float)
    step_total, steps = 0.0, 0
    for line in text.splitlines():
        m = ROW.match(line)
        if not m:
            continue
        action = m["action"]
        if action.startswith("[Callback]") and action.rsplit(".", 1)[-1] in STEP_HOOKS:
            name = re.sub(r"\{.*\}", "", action[len("[Callback]"):].rsplit(".", 1)[0])
            per_callback[name] += float(m["total"])
        if action == "run_training_batch":
            step_total, steps = float(m["total"]), int(m["calls"])
    return {k: v / steps * 1e6 for k, v in per_callback.items()}, step_total / steps * 1e6, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="benchmarks/mlp512.yaml")
    parser.add_argument("--subset", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    costs: dict[str, list[float]] = defaultdict(list)
    steps_us: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, quiet_named_warnings():
        root = mnist_root(args.data_dir, Path(tmp))
        for r in range(args.rounds):
            per, step, steps = one_round(args.config, root, args.subset, Path(tmp) / f"round{r}")
            for name, us in per.items():
                costs[name].append(us)
            steps_us.append(step)
    print(f"\n{args.config}: {steps} steps a round, {args.rounds} rounds; median microseconds per step")
    print(f"  {'the whole step (run_training_batch)':<48} {statistics.median(steps_us):>8.1f}")
    for name, values in sorted(costs.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"  {name:<48} {statistics.median(values):>8.1f}")
    print(f"  {'all callbacks':<48} {sum(statistics.median(v) for v in costs.values()):>8.1f}")


if __name__ == "__main__":
    main()
