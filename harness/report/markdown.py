"""Markdown renderings of result tables (the ``.md`` twin of every CSV, which the README includes)."""

from __future__ import annotations

import math

import pandas as pd


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (empty cells for missing values; floats to 2 decimals, eps to 4 digits)."""
    def fmt(name: str, v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if name == "eps" else f"{v:.2f}"
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(c, v) for c, v in zip(df.columns, r)) + " |\n"
                          for r in df.itertuples(index=False))
