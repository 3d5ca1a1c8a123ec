"""Host RSS over a short SFT run, with the run's phases marked: where a fine-tune's
memory goes on this machine (issue 15).

    python benchmarks/train_rss_timeline.py --config qwen2_05b_sft --layers 4 \
        --set data.tokenizer=~/.cache/marco-demo/qwen2.5-coder-0.5b-instruct-hf \
        --set data.path=../shared/data/marco/CoT_demo.json --set train.steps=4 \
        --set train.global_batch=2 --set data.seq_len=512 --set checkpoint.every=2 \
        --set output_dir=/tmp/rss --json-out results/train_rss.json

``--layers N`` keeps the config's model but with N layers (random weights), so a
run's copies of the state show at a fraction of the full model's memory. RSS is
sampled every 0.2 s; phases (set-up, data, initial weights, each logged step,
each checkpoint call, export) are marked at their start and end.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import threading
import time

from report import report

from marco_jax import model_config as model_config
from marco_jax.train import checkpoint as checkpoint_lib
from marco_jax.train import metrics as metrics_lib
from marco_jax.train import trainer
from marco_jax.train.config import load_train_config


def rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 2**20
    return 0.0


class Timeline:
    """RSS samples with phase marks: (seconds, GiB, label)."""

    def __init__(self):
        self.start, self.samples = time.perf_counter(), []
        threading.Thread(target=self._sample, daemon=True).start()

    def mark(self, label: str) -> None:
        self.samples.append((round(time.perf_counter() - self.start, 1), round(rss_gb(), 2),
                             label))

    def _sample(self) -> None:
        while True:
            self.mark("")
            time.sleep(0.2)

    def wrap(self, owner, name: str) -> None:
        inner = getattr(owner, name)

        def marked(*args, **kwargs):
            self.mark(f"start {name}")
            out = inner(*args, **kwargs)
            self.mark(f"end {name}")
            return out
        setattr(owner, name, marked)

    def phases(self) -> list[dict]:
        """Marked samples, each with the peak RSS since the previous mark."""
        out, peak = [], 0.0
        for seconds, gib, label in self.samples:
            peak = max(peak, gib)
            if label:
                out.append({"s": seconds, "rss_gib": gib, "peak_before_gib": peak,
                            "phase": label})
                peak = 0.0
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--layers", type=int, help="shorten the model to this many layers")
    parser.add_argument("--json-out", type=pathlib.Path)
    args = parser.parse_args()
    overrides = list(args.set)
    if args.layers:
        base = load_train_config(args.config, overrides).model.preset
        model_config.PRESETS["shortened"] = model_config.preset(base).replace(
            num_layers=args.layers)
        overrides.append("model.preset=shortened")
    cfg = load_train_config(args.config, overrides)
    timeline = Timeline()
    for owner, name in ((trainer, "set_up"), (trainer, "sft_batches"), (trainer, "_initial_params"),
                        (checkpoint_lib.RunCheckpoints, "save"),
                        (metrics_lib.MetricsLog, "write"), (trainer, "export")):
        timeline.wrap(owner, name)
    logged = trainer.train(cfg, progress=False)
    report({"config": cfg.name, "overrides": overrides,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "losses": [round(step["loss"], 4) for step in logged],
            "phases": timeline.phases()}, args.json_out)


if __name__ == "__main__":
    main()
