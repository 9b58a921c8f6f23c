"""Tables ready to export: ``Table`` (one frame, its ``Column`` list, caption, notes, provenance)
as Markdown, LaTeX (booktabs) and CSV, best and second best marked as in the paper (bold and
underline). The tables themselves are built in ``analysis.tables`` (results), ``analysis.ablation``
(feature ablation), ``analysis.protocol_tables`` (evaluation protocol) and ``analysis.objectives``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.provenance import Provenance

DASH = "–"


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes:
        key: Frame column holding the value (already in display units).
        markdown: Header in Markdown.
        latex: Header in LaTeX.
        decimals: Decimals of a number; None for a text column.
        better: ``"higher"`` or ``"lower"`` to mark best and second best; None not to mark.
        std: Frame column with the std, shown as ``value ± std`` where present.
        interval: Frame columns (low, high) shown as ``[low, high]`` instead of ``key``.
        signed: Numbers with an explicit sign (differences).
        suffix: Frame column with text put after the cell (significance marks such as ``*``).
    """

    key: str
    markdown: str
    latex: str
    decimals: int | None = None
    better: str | None = None
    std: str | None = None
    interval: tuple[str, str] | None = None
    signed: bool = False
    suffix: str | None = None


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _number(value, decimals: int, signed: bool = False) -> str:
    if _missing(value):
        return DASH
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def latex_escape(text: str) -> str:
    """Plain text (headers, captions, notes, cells) as LaTeX: specials escaped, symbols in math."""
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\^{}",
        "±": r"$\pm$",
        "–": "--",
        "Δ": r"$\Delta$",
        "†": r"\dag{}",
        "σ": r"$\sigma$",
        "×": r"$\times$",
    }
    return "".join(replacements.get(ch, ch) for ch in text)


def _markdown_marks(text: str) -> str:
    return text.replace("*", r"\*")


def _latex_marks(text: str) -> str:
    marks = {"*": r"\textsuperscript{*}", "†": r"\textsuperscript{\dag}"}
    return "".join(marks.get(ch, latex_escape(ch)) for ch in text)


@dataclass
class Table:
    """A table ready to export.

    Attributes:
        frame: One row per table row: display values, numeric columns behind them (std, interval,
            run ids, sources) and ``block`` (rows of one block are contiguous).
        columns: What is shown, in order.
        caption: Caption (LaTeX and Markdown).
        label: LaTeX label.
        notes: Footnotes under the table.
        provenance: Study record behind the table.
        mark_within: Column whose values delimit the groups best/second are marked within
            (None: the whole table).
    """

    frame: pd.DataFrame
    columns: list[Column]
    caption: str
    label: str
    notes: list[str] = field(default_factory=list)
    provenance: Provenance | None = None
    mark_within: str | None = None

    def text(self, row: int, column: Column) -> str:
        """The cell as text, without marks."""
        values = self.frame.iloc[row]
        if column.interval is not None:
            low, high = values[column.interval[0]], values[column.interval[1]]
            if _missing(low) or _missing(high):
                return DASH
            low = _number(low, column.decimals, column.signed)
            return f"[{low}, {_number(high, column.decimals, column.signed)}]"
        value = values[column.key]
        if column.decimals is None:
            return DASH if _missing(value) else str(value)
        text = _number(value, column.decimals, column.signed)
        if column.std is not None and not _missing(values[column.std]) and text != DASH:
            text += f" ± {values[column.std]:.{column.decimals}f}"
        return text

    def marks(self) -> dict[tuple[int, str], str]:
        """``{(row, column key): "best" | "second"}`` over the values as displayed (ties share)."""
        out: dict[tuple[int, str], str] = {}
        groups = (
            self.frame[self.mark_within].astype(str)
            if self.mark_within
            else pd.Series("", index=self.frame.index)
        )
        for column in self.columns:
            if column.better is None or column.decimals is None:
                continue
            rounded = self.frame[column.key].astype(float).round(column.decimals)
            for group in groups.unique():
                rows = [
                    i
                    for i in range(len(self.frame))
                    if groups.iloc[i] == group and not np.isnan(rounded.iloc[i])
                ]
                distinct = sorted(
                    {rounded.iloc[i] for i in rows}, reverse=column.better == "higher"
                )
                if len(rows) < 2:
                    continue
                for i in rows:
                    if rounded.iloc[i] == distinct[0]:
                        out[(i, column.key)] = "best"
                    elif len(distinct) > 1 and rounded.iloc[i] == distinct[1]:
                        out[(i, column.key)] = "second"
        return out

    def _rows(
        self, bold, underline, escape=lambda text: text, suffix=lambda text: text
    ) -> list[list[str]]:
        marks = self.marks()
        rows = []
        for i in range(len(self.frame)):
            cells = []
            for column in self.columns:
                text = escape(self.text(i, column))
                mark = marks.get((i, column.key))
                cell = (
                    bold(text) if mark == "best" else underline(text) if mark == "second" else text
                )
                extra = self.frame.iloc[i][column.suffix] if column.suffix else None
                if isinstance(extra, str) and extra:
                    cell += suffix(extra)
                cells.append(cell)
            rows.append(cells)
        return rows

    def to_markdown(self) -> str:
        """Markdown: caption, table (best **bold**, second _underlined_), notes, provenance."""
        header = [c.markdown for c in self.columns]
        align = [
            ":--" if c.decimals is None and c.interval is None else "--:" for c in self.columns
        ]
        lines = [
            f"**{_markdown_marks(self.caption)}**",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(align) + "|",
        ]
        for cells in self._rows(lambda t: f"**{t}**", lambda t: f"_{t}_", suffix=_markdown_marks):
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        lines.append("")
        lines += [f"{n}. {_markdown_marks(note)}" for n, note in enumerate(self.notes, start=1)]
        if self.provenance is not None:
            p = self.provenance
            lines += [
                "",
                f"<sub>Source: study `{p.study}`, {len(p.run_ids)} runs, git {p.short_commits}, "
                f"generated {p.generated_at}.</sub>",
                "",
                "<!-- provenance",
            ]
            lines += [f"  {line}" for line in p.lines()]
            lines.append("-->")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        """A booktabs ``table`` (``\\toprule``/``\\midrule``/``\\bottomrule``), one line per row.

        Best is ``\\textbf``, second ``\\underline``; provenance as ``%`` comments on top.
        """
        lines = []
        if self.provenance is not None:
            lines += [f"% {line}" for line in self.provenance.lines()]
        spec = "".join(
            "l" if c.decimals is None and c.interval is None else "r" for c in self.columns
        )
        lines += [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{latex_escape(self.caption)}}}",
            rf"\label{{{self.label}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(c.latex for c in self.columns) + r" \\",
            r"\midrule",
        ]
        rows = self._rows(
            lambda t: rf"\textbf{{{t}}}",
            lambda t: rf"\underline{{{t}}}",
            latex_escape,
            _latex_marks,
        )
        blocks = self.frame["block"].tolist() if "block" in self.frame else [""] * len(rows)
        for i, cells in enumerate(rows):
            if i and blocks[i] != blocks[i - 1]:
                lines.append(r"\midrule")
            lines.append(" & ".join(cells) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        for n, note in enumerate(self.notes, start=1):
            lines.append(rf"\par\smallskip{{\footnotesize ({n}) {latex_escape(note)}}}")
        lines.append(r"\end{table}")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """Every column behind the table (numbers unrounded), run ids and provenance per row."""
        frame = self.frame.copy()
        if self.provenance is not None:
            frame["study"] = self.provenance.study
            frame["git_commit"] = ",".join(self.provenance.git_commits)
            frame["generated_at"] = self.provenance.generated_at
        return frame.to_csv(index=False)

    def save(self, directory: str | Path, stem: str) -> dict[str, Path]:
        """Writes ``<stem>.md``, ``<stem>.tex`` and ``<stem>.csv``; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        paths = {
            "md": directory / f"{stem}.md",
            "tex": directory / f"{stem}.tex",
            "csv": directory / f"{stem}.csv",
        }
        paths["md"].write_text(self.to_markdown())
        paths["tex"].write_text(self.to_latex())
        paths["csv"].write_text(self.to_csv())
        return paths
