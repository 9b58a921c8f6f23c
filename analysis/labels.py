"""How tables and figures name what a configuration was trained on and how: the dataset's name,
the backbone's state (frozen or trainable) and a setting's label (all but the feature set).

Feature sets are named by ``bnn.feature_sets.display_label`` (the paper's ``RGB+Mag.+FFT``).
"""

from __future__ import annotations

import pandas as pd

from analysis.table_format import DASH

DATASET_NAMES = {
    "cocofake": "COCOFake",
    "dffd": "DFFD",
    "cifake": "CIFAKE",
    "synthetic": "the synthetic benchmark",
    "folder": "an image folder",
}


# What a row whose checkpoint was selected on the test split (``selection_split: test``) carries.
SELECTED_ON_TEST = "selected on TEST"


def is_selected_on_test(row) -> bool:
    """Whether a run's (or grouped row's) checkpoint was selected on the test split."""
    return str(row.get("selection_split", "val")) == "test"


def dataset_name(dataset: str, article: bool = True) -> str:
    """``"cocofake"`` -> ``"COCOFake"``; ``"synthetic"`` -> ``"the synthetic benchmark"``, without
    ``"the "`` when not ``article`` (a label rather than a phrase). Unknown names unchanged."""
    name = DATASET_NAMES.get(dataset, dataset)
    return name if article else name.removeprefix("the ")


def backbone_state(frozen) -> str:
    """``"frozen"`` or ``"trainable"`` for a ``freeze_backbone`` value; a dash where missing."""
    if frozen is None or pd.isna(frozen):
        return DASH
    return "frozen" if bool(frozen) else "trainable"


def setting_label(row: pd.Series, varying: list[str]) -> str:
    """What a row shares with the others of its setting (all but the features): ``BNext-T,
    trainable, COCOFake`` plus ``key=value`` for every other key in ``varying``."""
    parts = [str(row.get("model") or row.get("backbone") or "")]
    if "freeze_backbone" in row and not pd.isna(row["freeze_backbone"]):
        parts.append(backbone_state(row["freeze_backbone"]))
    if "dataset" in row and row["dataset"]:
        parts.append(dataset_name(row["dataset"], article=False))
    parts += [
        f"{k}={row[k]}" for k in varying if k not in ("backbone", "freeze_backbone", "dataset")
    ]
    return ", ".join(p for p in parts if p)
