"""One row per detection metric: how it is named, read and shown everywhere in the suite.

``bnn.metrics`` computes the metrics; this table says what each one is to the rest of the suite:
whether higher or lower is better (the objective check, Pareto fronts, best-value marks in tables),
whether it is a share shown in per cent (figure axes and table columns), its label, its table
header and decimals, whether it needs real and fake images (AUC, EER, AP), and on which protocol
splits it is logged (an extra test set, ``eval_<set>_<metric>``; a perturbed test split,
``robust_<key>_<metric>``; ``bnn.protocol``). A new metric is one row here (and its computation in
``bnn.metrics``); every reader takes it from the row.

Names and definitions follow DeepfakeBench (Yan et al., NeurIPS 2023 datasets track) and the
calibration literature (ECE: Guo et al., ICML 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

MAXIMIZE, MINIMIZE = "maximize", "minimize"
EVAL, ROBUST = "eval", "robust"  # the protocol splits of bnn.protocol


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is read and shown.

    Attributes:
        name: The metric name after its split prefix (``auc`` in ``test_auc``, ``eval_x_auc``).
        direction: ``maximize`` or ``minimize`` (which way is better); ``None`` for a count or a
            threshold, which are not qualities.
        percent: A share in [0, 1], shown multiplied by 100 with ``(%)``.
        label: The metric in sentences and axis labels (``AUC``, ``accuracy``, ``ECE``).
        header: A table column header without its unit (``Acc. @0.5``).
        latex: The same header in LaTeX.
        decimals: Decimals in tables (after the per-cent scaling).
        two_class: Defined only when real and fake images are both present (NaN on a one-class
            split): AUC, EER, AP, TPR at FPR.
        splits: The protocol splits (``eval``, ``robust``) the metric is logged on.
    """

    name: str
    direction: str | None
    percent: bool
    label: str
    header: str
    latex: str
    decimals: int
    two_class: bool = False
    splits: tuple[str, ...] = (EVAL, ROBUST)

    @property
    def lower_is_better(self) -> bool:
        return self.direction == MINIMIZE

    def column_header(self) -> str:
        """``AUC (%)``, ``Brier``: the header with its unit."""
        return f"{self.header} (%)" if self.percent else self.header

    def column_latex(self) -> str:
        """The LaTeX header with its unit (a control space after an abbreviation's full stop)."""
        if not self.percent:
            return self.latex
        return self.latex + (r"\ (\%)" if self.latex.endswith(".") else r" (\%)")

    @property
    def title(self) -> str:
        """The label capitalised for a heading (``Accuracy``, ``AUC``)."""
        return self.label[:1].upper() + self.label[1:]

    @property
    def better(self) -> str | None:
        """``higher`` or ``lower`` (``analysis.table_format.Column.better``); ``None``."""
        return {MAXIMIZE: "higher", MINIMIZE: "lower"}.get(self.direction or "")


def _share(name: str, label: str, header: str, latex: str, two_class: bool = False,
           splits: tuple[str, ...] = (EVAL, ROBUST)) -> MetricSpec:
    return MetricSpec(name, MAXIMIZE, True, label, header, latex, 2, two_class, splits)


_ROWS = (
    _share("accuracy", "accuracy", "Acc. @0.5", r"Acc.\ @0.5"),
    _share("auc", "AUC", "AUC", "AUC", two_class=True),
    MetricSpec("eer", MINIMIZE, True, "EER", "EER", "EER", 2, two_class=True),
    _share("ap", "AP", "AP", "AP", two_class=True),
    _share("accuracy_real", "accuracy real", "Acc. real", r"Acc.\ real"),
    _share("accuracy_fake", "accuracy fake", "Acc. fake", r"Acc.\ fake"),
    MetricSpec("ece", MINIMIZE, True, "ECE", "ECE", "ECE", 2, splits=(EVAL,)),
    MetricSpec("brier", MINIMIZE, False, "Brier score", "Brier", "Brier", 4, splits=(EVAL,)),
    _share("accuracy_valthr", "accuracy at the validation threshold", "Acc. @val. thr.",
           r"Acc.\ @val.\ thr."),
    _share("tpr_at_fpr_1pct", "TPR at FPR 1%", "TPR @FPR 1%", r"TPR @FPR 1\%", two_class=True,
           splits=(EVAL,)),
    _share("tpr_at_fpr_0p1pct", "TPR at FPR 0.1%", "TPR @FPR 0.1%", r"TPR @FPR 0.1\%", two_class=True,
           splits=(EVAL,)),
    MetricSpec("count", None, False, "images", "n", "n", 0, splits=(EVAL,)),
    MetricSpec("eer_threshold", None, False, "EER threshold", "EER thr.", r"EER thr.", 4, splits=()),
    MetricSpec("loss", MINIMIZE, False, "loss", "Loss", "Loss", 4, splits=()),
)
METRICS: dict[str, MetricSpec] = {row.name: row for row in _ROWS}
# Longest first, so ``accuracy_real`` is found before ``accuracy`` at a column's end.
_BY_LENGTH = sorted(METRICS, key=len, reverse=True)


def metrics_on(split: str) -> tuple[str, ...]:
    """Names logged on a protocol split (``eval`` or ``robust``), in table order."""
    return tuple(row.name for row in _ROWS if split in row.splits)


def spec_of(column: str) -> MetricSpec | None:
    """The row of a metric column: its name is the column (``auc``) or its end after an ``_``
    (``test_auc``, ``eval_cifake_accuracy_real``, ``robust_jpeg_75_eer``); ``None`` for any
    other column (a cost, ``test_auc_ci_low``)."""
    for name in _BY_LENGTH:
        if column == name or column.endswith(f"_{name}"):
            return METRICS[name]
    return None
