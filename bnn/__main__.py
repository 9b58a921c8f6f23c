"""Command line of the bnn package: ``python -m bnn cost [...]``."""

from __future__ import annotations

import argparse
import sys

from bnn.backbones import list_backbones

PAPER_FEATURE_SETS = ["rgb", "rgb+fft+lbp"]
ALL_FEATURE_SETS = [
    "rgb", "rgb+sobel", "rgb+fft", "rgb+lbp", "rgb+sobel+fft", "rgb+sobel+lbp", "rgb+fft+lbp", "rgb+sobel+fft+lbp",
]
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
    from bnn.cost import cost_table

    feature_sets = ALL_FEATURE_SETS if args.features == ["all"] else args.features
    frozen = {"both": (False, True), "trainable": (False,), "frozen": (True,)}[args.frozen]
    df = cost_table(args.backbones, feature_sets, frozen, (args.size, args.size))
    if args.format == "text":
        print(f"# detector cost per {args.size}x{args.size} image, in MACs; OPs = FLOPs + BOPs/64; "
              "feature FLOPs (FFT/LBP/Sobel) are estimated and not included in OPs")
    print(_format(df, args.format))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cost = sub.add_parser(
        "cost",
        help="parameters, BOPs, FLOPs, OPs and storage of detectors",
        description="Cost table: backbone x feature set x frozen/trainable, counted per image.",
        epilog=EXAMPLES,
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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
