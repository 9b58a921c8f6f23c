"""One-factor-at-a-time diagnosis of BNext trained from scratch (the table in docs/training.md).

Every run trains BNext-T from random weights on the quickstart's synthetic benchmark (800 images,
36 px generated, 32 px crops, difficulty 0) for 5 epochs at batch 32, and changes ONE factor
against ``today`` (the suite's recipe before the diagnosis: the paper's augmentation, the authors'
linear head, AdamW 3e-4 with weight decay 1e-2 on every weight, clipping at norm 1, hard sign from
the first step). A second group changes one factor against ``fixed`` (BatchNorm head). Each run
appends one JSON line (per-epoch validation accuracy/AUC, train loss, test accuracy/AUC, seconds)
to ``--out``; ``--table`` prints the markdown table of a results file.

    python benchmarks/training_diagnosis.py --out diag.jsonl                 # every run (long)
    python benchmarks/training_diagnosis.py --out diag.jsonl --only today fixed
    python benchmarks/training_diagnosis.py --lr-range                       # LR range test
    python benchmarks/training_diagnosis.py --table diag.jsonl

The LR range test (Smith, "Cyclical Learning Rates for Training Neural Networks", WACV 2017)
trains one epoch while the learning rate grows geometrically from 1e-6 to 1e-1 per batch and
prints the loss per batch; a good peak rate is about a tenth of the rate where the loss diverges.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bnn.config import FitConfig, create_detector_from_config
from bnn.device import seed_everything
from bnn.optim import parameter_groups
from bnn.splits import load_splits, make_loader
from bnn.train import fit

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

DATA = {"count": 800, "image_size": 36, "difficulty": 0.0}
BASE = dict(backbone="bnext_tiny", features="rgb+fft+lbp", dataset="synthetic", data_params=DATA, resolution=32,
            epochs=5, batch_size=32)
TODAY = dict(**BASE, lr=3e-4, min_lr=3e-5, lr_decay_epochs=5, head="linear", augment={"preset": "paper"},
             grad_clip_norm=1.0, weight_decay=1e-2)
FIXED = {**TODAY, "head": "bn_linear"}
STANDARD = {**FIXED, "augment": {"preset": "standard"}}

# name -> (factor, setting, config)
RUNS: dict[str, tuple[str, str, dict]] = {
    "today": ("(none)", "suite before the diagnosis", TODAY),
    "head": ("head", "bn_linear (normalised, zero-init)", FIXED),
    "aug_standard_linear_head": ("augmentation", "standard, linear head", {**TODAY, "augment": {"preset": "standard"}}),
    "no_rotation": ("rotation", "rotate90_p 0 (bn head)", {**FIXED, "augment": {"preset": "paper", "rotate90_p": 0.0}}),
    "no_jitter": ("colour jitter", "color_jitter 0 (bn head)", {**FIXED, "augment": {"preset": "paper", "color_jitter": 0.0}}),
    "standard": ("augmentation", "standard (bn head)", STANDARD),
    "no_clip": ("gradient clipping", "off (bn head, standard)", {**STANDARD, "grad_clip_norm": None}),
    "binary_wd0": ("weight decay on binary weights", "0 (bn head, standard)", {**STANDARD, "binary_weight_decay": 0.0}),
    "soft_bnext": ("soft-to-hard binarisation", "T0 1, x0.9/epoch (bn head, standard)",
                   {**STANDARD, "weight_temperature": 1.0, "weight_temperature_decay": 0.9}),
    "lr_1e-3_cosine": ("learning rate", "1e-3 cosine, warm-up 0.5 (bn head, standard)",
                       {**STANDARD, "lr": 1e-3, "min_lr": 0.0, "lr_schedule": "cosine", "warmup_epochs": 0.5}),
    "res64": ("resolution", "64 px (bn head, standard)",
              {**STANDARD, "resolution": 64, "data_params": {**DATA, "image_size": 72}}),
    "scratch_recipe": ("recipe", "scratch (bnn/config.py RECIPES)", {**BASE, "recipe": "scratch"}),
    "rgb_today": ("features", "rgb only, today", {**TODAY, "features": "rgb"}),
    "rgb_scratch": ("features", "rgb only, scratch recipe", {**BASE, "features": "rgb", "recipe": "scratch"}),
}


def run(name: str, out_file: Path, seed: int) -> dict:
    factor, setting, values = RUNS[name]
    config = FitConfig(**values, seed=seed, output_dir=tempfile.mkdtemp(prefix=f"diag-{name}-"))
    start = time.perf_counter()
    result = fit(config)
    row = {
        "name": name, "factor": factor, "setting": setting, "seed": seed,
        "val_accuracy": [round(h.val_accuracy, 3) for h in result.history],
        "val_auc": [round(h.val_auc, 3) for h in result.history],
        "train_loss": [round(h.train_loss, 3) for h in result.history],
        "test_accuracy": round(result.test.accuracy, 3), "test_auc": round(result.test.auc, 3),
        "seconds": round(time.perf_counter() - start, 1),
    }
    with out_file.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def lr_range(head: str, batches: int = 18, low: float = 1e-6, high: float = 1e-1) -> None:
    config = FitConfig(**{**STANDARD, "head": head})
    seed_everything(0)
    model = create_detector_from_config(config).train()
    optimizer = torch.optim.AdamW(parameter_groups(model, config), lr=low)
    loader = make_loader(load_splits(config)["train"], config, torch.device("cpu"), shuffle=True)
    print(f"LR range test, head {head}: batch, lr, loss")
    step = 0
    while step < batches:
        for images, labels, _, _ in loader:
            lr = low * (high / low) ** (step / max(batches - 1, 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.binary_cross_entropy_with_logits(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            print(f"{step}\t{lr:.2e}\t{loss.item():.3f}", flush=True)
            step += 1
            if step >= batches or not math.isfinite(loss.item()):
                return


def table(path: Path) -> str:
    lines = ["| run | factor | setting | seed | val accuracy per epoch | val AUC per epoch | epoch-0 train loss | test acc | test AUC |",
             "|---|---|---|---|---|---|---|---|---|"]
    for line in path.read_text().splitlines():
        r = json.loads(line)
        lines.append(
            f"| {r['name']} | {r['factor']} | {r['setting']} | {r['seed']} | {' / '.join(f'{v:.3f}' for v in r['val_accuracy'])} "
            f"| {' / '.join(f'{v:.2f}' for v in r['val_auc'])} | {r['train_loss'][0]:.2f} | {r['test_accuracy']:.3f} | {r['test_auc']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("diagnosis.jsonl"))
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="runs to do (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--lr-range", action="store_true", help="run the LR range test instead")
    parser.add_argument("--table", type=Path, help="print the markdown table of a results file")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if args.lr_range:
        for head in ("linear", "bn_linear"):
            lr_range(head)
        return
    for seed in args.seeds:
        for name in args.only or RUNS:
            run(name, args.out, seed)


if __name__ == "__main__":
    main()
