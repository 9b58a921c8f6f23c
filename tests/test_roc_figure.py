"""``studies.roc_figure``: the one ROC drawing, on matplotlib's object API (no pyplot, no backend switch)."""

from __future__ import annotations

import matplotlib
import pytest

from studies.roc_figure import agg_figure, draw_roc


def test_draw_roc_labels_each_curve_with_its_auc_and_adds_the_chance_diagonal(tmp_path):
    backend = matplotlib.get_backend()
    fig = agg_figure(4, 3)
    ax = fig.subplots()
    rocs = {"a": {"fpr": [0, 0, 1], "tpr": [0, 1, 1]}, "b": {"fpr": [0, 1], "tpr": [0, 1]}}
    draw_roc(ax, rocs, colors=["red", "blue"], percent=True, lw=1.6)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["a (AUC 100.00)", "b (AUC 50.00)"]  # trapezoidal area of the drawn points
    assert [line.get_color() for line in ax.get_lines()[:2]] == ["red", "blue"]
    assert list(ax.get_lines()[2].get_xdata()) == [0, 1] and ax.get_lines()[2].get_linestyle() == "--"
    fig.savefig(tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert matplotlib.get_backend() == backend


def test_draw_roc_shows_a_given_auc_as_a_fraction_for_an_unlabelled_curve():
    ax = agg_figure(4, 3).subplots()
    draw_roc(ax, {"": {"fpr": [0, 0.5, 1], "tpr": [0, 0.9, 1]}}, auc={"": 0.8734})
    assert ax.get_lines()[0].get_label() == "AUC 0.873"
    assert ax.get_lines()[0].get_linewidth() == pytest.approx(matplotlib.rcParams["lines.linewidth"])
