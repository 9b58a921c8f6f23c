"""Command line of the bnn package: ``python -m bnn cost|train|audit|evaluate|detect|export``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import torch

from bnn.backbones import list_backbones
from bnn.checkpoint import load_detector, saved_val_threshold
from bnn.config import FitConfig, parse_overrides
from bnn.cost import cost_table
from bnn.data import UnreadableImage, build_transform, create_dataset, load_rgb
from bnn.data.layout import IMAGE_EXTENSIONS, list_images
from bnn.device import resolve_device
from bnn.errors import EXIT_INTERRUPTED, exit_status_help, quiet_storage_faults, run_cli
from bnn.evaluation import evaluate
from bnn.export import OpenVINODetector, export
from bnn.feature_sets import all_feature_sets
from bnn.inference import for_inference
from bnn.protocol import source_scalars
from bnn.signals import FitInterrupted, StopRequest
from bnn.splits import make_loader, prepare_splits
from bnn.train import fit

PAPER_FEATURE_SETS = ["rgb", "rgb+fft+lbp"]  # the paper's Table 1-3 rows: RGB and its best set
DEFAULT_BACKBONES = [n for n in list_backbones() if n != "bnext_micro"]

EXAMPLES = """examples:
  python -m bnn cost                                   # T/S/M/L and the baselines, rgb and rgb+fft+lbp
  python -m bnn cost --backbones bnext_tiny bnext_small --features all --format markdown
  python -m bnn cost --frozen trainable --format latex > cost.tex
  python -m bnn cost --size 32 --format csv            # CIFAKE resolution
"""


def _format(df, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6g")
    if fmt == "markdown":
        return df.to_markdown(index=False, floatfmt=".4g")
    if fmt == "latex":
        return df.to_latex(index=False, float_format="%.4g")
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _cost(args: argparse.Namespace) -> int:
    feature_sets = all_feature_sets() if args.features == ["all"] else args.features
    frozen = {"both": (False, True), "trainable": (False,), "frozen": (True,)}[args.frozen]
    df = cost_table(args.backbones, feature_sets, frozen, (args.size, args.size))
    if args.format == "text":
        print(f"# detector cost per {args.size}x{args.size} image, in MACs; OPs = FLOPs + BOPs/64; "
              "feature FLOPs (FFT/LBP/Sobel) are estimated and not included in OPs")
    print(_format(df, args.format))
    return 0


TRAIN_EXAMPLES = """examples:
  python -m bnn train run.yaml                          # keys of bnn.config.FitConfig
  python -m bnn train run.yaml --set epochs=1 --set batch_size=32
  python -m bnn train --set dataset=synthetic --set resolution=64 --set backbone=bnext_micro

A YAML run file, e.g.:
  backbone: bnext_tiny
  features: rgb+fft+lbp
  dataset: synthetic
  resolution: 64
  epochs: 5
  output_dir: runs/tiny64
Re-running the same command resumes from output_dir/last.pt.
"""

EVALUATE_EXAMPLES = """examples:
  python -m bnn evaluate --checkpoint runs/tiny64/best.pt                 # its own dataset, test split
  python -m bnn evaluate --checkpoint best.pt --dataset cifake --data-root ~/data/cifake --split test
"""

DETECT_EXAMPLES = """examples:
  python -m bnn detect photo.jpg --checkpoint runs/tiny64/best.pt
  python -m bnn detect ~/images/ --checkpoint best.pt --json > predictions.jsonl
  python -m bnn detect ~/images/ --engine openvino --checkpoint exported/tiny64   # 1-bit XNOR/popcount
"""

EXPORT_EXAMPLES = """examples:
  python -m bnn export runs/tiny64/best.pt --out exported/tiny64          # OpenVINO, binary convs 1-bit
  python -m bnn export best.pt --out exported/x --size 224
"""


AUDIT_EXAMPLES = """examples:
  python -m bnn audit --dataset cifake --data-root /data/cifake --set resolution=32
  python -m bnn audit --dataset folder --data-root /data/faces --set max_train_samples=10000 --json

Reports exact duplicates within and across the train/val/test splits (before dedupe), what dedupe
drops, per-class format, size, JPEG quality and file size, and two floors that see no network: a
no-pixel shortcut baseline and a logistic regression on the radial FFT profile (bnn.data.audit).
The splits are those a fit of the same keys uses (--set takes bnn.config.FitConfig keys).
"""


def _audit(args: argparse.Namespace) -> int:
    values = {"dataset": args.dataset, **parse_overrides(args.set)}
    if args.data_root:
        values["data_root"] = args.data_root
    config = FitConfig.from_mapping(values, "--set")
    report = prepare_splits(config).audit
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        for name, text in report.data.items():
            print(f"{name}: {text}")
        print("\n".join(report.lines()))
    return 0


def _train(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    if args.config:
        config = FitConfig.from_yaml(args.config, overrides)
    else:
        config = FitConfig.from_mapping(overrides, "--set")
    with StopRequest() as stop:  # Ctrl-C stops between batches; the last finished epoch is kept
        try:
            result = fit(config, should_stop=stop.__bool__)
        except FitInterrupted as err:
            print(f"interrupted ({stop.signal}, {err}); re-run the same command to resume from the last "
                  "finished epoch", file=sys.stderr)
            return 130
    print(f"data: {result.data['train']}")
    print(f"best epoch {result.best_epoch}: val acc {result.val.accuracy:.4f} auc {result.val.auc:.4f}")
    print(f"test: acc {result.test.accuracy:.4f} auc {result.test.auc:.4f} eer {result.test.eer:.4f} ap {result.test.ap:.4f}")
    print(f"checkpoint: {result.checkpoint}  skipped images: {result.skipped_images}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model, config = load_detector(args.checkpoint, args.device)
    dataset = args.dataset or config.dataset
    root = args.data_root if args.dataset else (args.data_root or config.data_root)
    params = {} if args.dataset else dict(config.data_params)
    ds = create_dataset(dataset, args.split, root=root, resolution=config.resolution, **params)
    device = resolve_device(args.device)
    loader = make_loader(ds, config.model_copy(update={"batch_size": args.batch_size}), device, shuffle=False)
    threshold = saved_val_threshold(args.checkpoint)
    loss, metrics, predictions, skipped, ips = evaluate(model, loader, device, amp=config.amp, desc=args.split,
                                                        val_threshold=threshold)
    report = {"split": args.split, "loss": loss, **metrics.scalars(), **source_scalars(predictions),
              "skipped_images": skipped, "images_per_second": ips}
    # NaN is not JSON: a metric that is not defined on this split (AUC, EER, AP on one class) is null.
    undefined = [k for k, v in report.items() if isinstance(v, float) and math.isnan(v)]
    # What was evaluated goes to stderr, so stdout is one JSON document (``| python -m json.tool``).
    print(f"data: {ds.describe()}", file=sys.stderr)
    if threshold is None:
        print("accuracy_valthr: this checkpoint has no stored validation threshold (written before it was "
              "kept); the split's own equal-error-rate threshold is used", file=sys.stderr)
    if undefined:
        missing = "readable" if metrics.count == 0 else "real" if math.isnan(metrics.accuracy_real) else "fake"
        print(f"not defined (no {missing} images in this split): {', '.join(undefined)} (null below)", file=sys.stderr)
    print(json.dumps({k: None if k in undefined else v for k, v in report.items()}, indent=2))
    return 0


def _detect(args: argparse.Namespace) -> int:
    """Prints a prediction per readable image; an ``UnreadableImage`` gets a warning line on stderr
    (and with ``--json`` a ``{"path", "error"}`` line in its place) and makes the exit status 1."""
    if args.engine == "openvino":
        model = OpenVINODetector(args.checkpoint)
        device = torch.device("cpu")
        transform = build_transform(model.input_size[0], train=False)
    else:
        model, config = load_detector(args.checkpoint, args.device)
        model = for_inference(model)  # sign(w) once, plain sign: identical outputs, about 2x faster
        device = next(model.parameters()).device
        transform = build_transform(config.resolution, train=False)
    paths = []
    for item in args.inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p, recursive=True)  # the readers' listing: no ._*, __MACOSX, .DS_Store
            if not found:
                print(f"warning: no image files ({', '.join(IMAGE_EXTENSIONS)}) in '{p}'", file=sys.stderr)
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise ValueError(f"no such file or folder: '{p}'")
    if not paths:
        raise ValueError(f"no image files to detect in {', '.join(repr(i) for i in args.inputs)}")
    # OpenVINO compiles the network once per batch size (static shapes; about a second each), so
    # every batch is padded with copies of its last image to one size: a short last batch or one
    # with unreadable images costs a few padded images instead of a compilation. Padding does not
    # change a probability (each image's output is independent of the rest of its batch).
    pad_to = min(args.batch_size, len(paths)) if args.engine == "openvino" else 0
    skipped = 0
    for start in range(0, len(paths), args.batch_size):
        rows: list[tuple[Path, str | None]] = []  # (path, reason it is unreadable or None), in order
        images = []
        for path in paths[start : start + args.batch_size]:
            try:
                images.append(transform(load_rgb(path)))
                rows.append((path, None))
            except UnreadableImage as err:
                print(f"warning: skipping unreadable image '{path}': {err.reason}", file=sys.stderr)
                rows.append((path, err.reason))
                skipped += 1
        batch = torch.stack(images + images[-1:] * (pad_to - len(images))) if images else None
        probs = iter(model.predict_proba(batch.to(device)).tolist()[: len(images)] if images else [])
        for path, error in rows:
            if error is not None:
                if args.json:
                    print(json.dumps({"path": str(path), "error": error}))
                continue
            prob = next(probs)
            label = "fake" if prob >= 0.5 else "real"
            if args.json:
                print(json.dumps({"path": str(path), "prob_fake": prob, "label": label}))
            else:
                print(f"{prob:.4f}  {label:4}  {path}")
    if skipped:
        print(f"warning: {skipped} of {len(paths)} image(s) skipped as unreadable", file=sys.stderr)
    return 1 if skipped else 0


def _export(args: argparse.Namespace) -> int:
    size = (args.size, args.size) if args.size else None
    print(export(args.checkpoint, args.out, fmt=args.format, input_size=size))
    return 0


def main(argv: list[str] | None = None) -> int:
    status = exit_status_help("some inputs were skipped (detect: unreadable images)")
    parser = argparse.ArgumentParser(prog="python -m bnn", description=__doc__.replace("``", ""), epilog=status,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    cost = sub.add_parser(
        "cost",
        help="parameters, BOPs, FLOPs, OPs and storage of detectors",
        description="Cost table: backbone x feature set x frozen/trainable, counted per image.",
        epilog=f"{EXAMPLES}\n{status}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cost.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES, choices=list_backbones(), metavar="NAME",
                      help=f"backbones (default: all but bnext_micro); choices: {', '.join(list_backbones())}")
    cost.add_argument("--features", nargs="+", default=PAPER_FEATURE_SETS, metavar="SET",
                      help="feature sets like rgb+fft+lbp, or 'all' for the 8 sets of Table 4 (default: rgb rgb+fft+lbp)")
    cost.add_argument("--frozen", choices=["both", "trainable", "frozen"], default="both")
    cost.add_argument("--size", type=int, default=224, help="input resolution (default 224)")
    cost.add_argument("--format", choices=["text", "markdown", "latex", "csv"], default="text")
    cost.set_defaults(func=_cost)

    def command(name: str, help_: str, epilog: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"{epilog}\n{status}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    train = command("train", "train one configuration (no Optuna or MLflow needed)", TRAIN_EXAMPLES)
    train.add_argument("config", nargs="?", help="YAML file of bnn.config.FitConfig keys")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    train.set_defaults(func=_train)

    aud = command("audit", "audit a dataset's splits: duplicates, file statistics, shortcut floors", AUDIT_EXAMPLES)
    aud.add_argument("--dataset", required=True, help="registered dataset")
    aud.add_argument("--data-root", help="dataset root (default: the dataset's env variable)")
    aud.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="a FitConfig key of the splits (resolution, data_params.*, max_*_samples, dedupe, seed)")
    aud.add_argument("--json", action="store_true", help="the whole report as JSON")
    aud.set_defaults(func=_audit)

    ev = command("evaluate", "evaluate a checkpoint written by train on a dataset split", EVALUATE_EXAMPLES)
    ev.add_argument("--checkpoint", required=True, help="best.pt written by train")
    ev.add_argument("--dataset", help="registered dataset (default: the checkpoint's)")
    ev.add_argument("--data-root", help="dataset root (default: the checkpoint's or the env variable)")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--device", default="auto")
    ev.set_defaults(func=_evaluate)

    det = command("detect", "print the fake probability of images", DETECT_EXAMPLES)
    det.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    det.add_argument("--checkpoint", required=True, help="best.pt written by train")
    det.add_argument("--json", action="store_true", help="one JSON object per line")
    det.add_argument("--batch-size", type=int, default=32)
    det.add_argument("--device", default="auto")
    det.add_argument("--engine", default="torch", choices=["torch", "openvino"],
                     help="openvino: --checkpoint is a folder written by `python -m bnn export`")
    det.set_defaults(func=_detect)

    exp = command("export", "export a checkpoint to OpenVINO, binary convolutions as 1-bit XNOR/popcount",
                  EXPORT_EXAMPLES)
    exp.add_argument("checkpoint", help="best.pt written by train")
    exp.add_argument("--out", required=True, help="output folder (model.xml/.bin, detector.json)")
    exp.add_argument("--format", default="openvino", choices=["openvino"])
    exp.add_argument("--size", type=int, help="input side (default: the training resolution)")
    exp.set_defaults(func=_export)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_storage_faults()
    extra = {}
    if args.command == "train":  # fit stopped at a safe point
        extra = {FitInterrupted: lambda err: (str(err), EXIT_INTERRUPTED)}
    return run_cli(lambda: args.func(args), extra)


if __name__ == "__main__":
    sys.exit(main())
