"""Where a table or figure comes from: study, runs, git commit, data and time of generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pandas as pd


def _unique(values) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for value in values:
        if value is not None and not (isinstance(value, float) and pd.isna(value)) and str(value):
            seen.setdefault(str(value), None)
    return tuple(seen)


def _selected_on_test(frame: pd.DataFrame) -> int:
    if "selection_split" not in frame:
        return 0
    return int(frame["selection_split"].astype(object).eq("test").sum())


@dataclass(frozen=True)
class Provenance:
    """The record behind a table or figure.

    Attributes:
        study: Study name.
        tracking_uri: MLflow URI the runs were read from (credentials removed).
        parent_run_id: The study's parent run.
        run_ids: Child runs used (finished cells).
        git_commits: Commits the runs were trained at.
        data: Descriptions of the data the runs used (``bnn.data`` tags).
        synthetic: Whether any run used synthetic data.
        selected_on_test: Runs whose checkpoint was selected on the test split
            (``selection_split: test``).
        unfinished: {status: count} of the study's runs that did not finish (left out).
        stale: {how they differ: count} of the runs of an earlier version of the study file
            (``analysis.runs.load_runs``' ``stale`` attribute).
        stale_included: Whether those runs are in the table (labelled) or left out.
        generated_at: UTC time the table or figure was made.
    """

    study: str
    tracking_uri: str = ""
    parent_run_id: str | None = None
    run_ids: tuple[str, ...] = ()
    git_commits: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    synthetic: bool = False
    selected_on_test: int = 0
    unfinished: dict[str, int] = field(default_factory=dict)
    stale: dict[str, int] = field(default_factory=dict)
    stale_included: bool = False
    generated_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )

    @classmethod
    def from_runs(cls, frame: pd.DataFrame) -> Provenance:
        """From a frame of ``analysis.runs.load_runs`` (or ``group_replicates``)."""
        if "run_ids" in frame.columns:
            run_ids = _unique(i for ids in frame["run_ids"] for i in str(ids).split(",") if i)
        else:
            run_ids = _unique(frame.get("run_id", []))
        synthetic = (
            bool(frame["synthetic"].fillna(False).astype(bool).any())
            if "synthetic" in frame
            else False
        )
        commits = _unique(frame.get("git_commit", [])) or _unique(
            [frame.attrs.get("parent_git_commit")]
        )
        return cls(
            study=str(frame.attrs.get("study", "")),
            tracking_uri=str(frame.attrs.get("tracking_uri", "")),
            parent_run_id=frame.attrs.get("parent_run_id"),
            run_ids=run_ids,
            git_commits=commits,
            data=_unique(frame.get("data", [])),
            synthetic=synthetic,
            selected_on_test=_selected_on_test(frame),
            unfinished=dict(frame.attrs.get("unfinished", {})),
            stale=dict(frame.attrs.get("stale", {})),
            stale_included=bool(frame.attrs.get("stale_included", False)),
        )

    @property
    def short_commits(self) -> str:
        return ", ".join(c[:10] for c in self.git_commits) or "unknown"

    @property
    def unfinished_text(self) -> str:
        if not self.unfinished:
            return "none"
        return ", ".join(f"{n} {status}" for status, n in self.unfinished.items())

    @property
    def stale_text(self) -> str:
        """One sentence on the runs of an earlier version of the study file (empty when none)."""
        if not self.stale:
            return ""
        n = sum(self.stale.values())
        how = "; ".join(f"{reason} ({count})" for reason, count in self.stale.items())
        where = "included, labelled stale" if self.stale_included else "left out (reports render --include-stale shows them)"
        return f"{n} run(s) of an earlier version of the study file, {where}: {how}"

    def lines(self) -> list[str]:
        """Full provenance, one fact per line (for table comments and footnotes)."""
        lines = [
            f"study: {self.study} (parent run {self.parent_run_id}, {self.tracking_uri})",
            f"runs: {len(self.run_ids)} finished ({', '.join(self.run_ids)}); "
            f"not finished, left out: {self.unfinished_text}",
            f"git commit: {', '.join(self.git_commits) or 'unknown'}",
        ]
        lines += [f"stale: {self.stale_text}"] if self.stale else []
        lines += [f"data: {d}" for d in self.data]
        if self.synthetic:
            lines.append("synthetic data: numbers are not comparable with published results")
        if self.selected_on_test:
            lines.append(f"{self.selected_on_test} row(s) selected their checkpoint on the TEST split")
        lines.append(f"generated: {self.generated_at}")
        return lines

    def footer(self) -> str:
        """One short line for a figure's footer."""
        text = (
            f"study {self.study} | {len(self.run_ids)} runs | git {self.short_commits} | "
            f"generated {self.generated_at}"
        )
        text += " | synthetic data" if self.synthetic else ""
        return text + (f" | {self.selected_on_test} selected on TEST" if self.selected_on_test else "")

    def markdown(self) -> str:
        """A short Markdown summary of the study record for the report's first section."""
        items = [
            f"- **Study**: `{self.study}`; parent run `{self.parent_run_id}`; "
            f"tracking URI `{self.tracking_uri}`",
            f"- **Runs**: {len(self.run_ids)} finished; "
            f"not finished (left out): {self.unfinished_text}",
            f"- **Git commit**: {', '.join(f'`{c}`' for c in self.git_commits) or 'unknown'}",
        ]
        items += [f"- **Stale runs**: {self.stale_text}."] if self.stale else []
        items += [f"- **Data**: {d}" for d in self.data]
        if self.synthetic:
            items.append(
                "- **Synthetic data**: these numbers are not comparable with published results."
            )
        if self.selected_on_test:
            items.append(f"- **Selected on test**: {self.selected_on_test} row(s) chose their checkpoint on the "
                         "test split (`selection_split: test`); their test metrics are optimistic.")
        items.append(f"- **Generated**: {self.generated_at}")
        return "\n".join(items)
