"""One look for every figure: a colour and marker per method, headless saving through a temporary file."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402

from harness.config.settings import REPO  # noqa: E402
from harness.rundir import atomic_write_bytes  # noqa: E402

PLOTS = REPO / "plots"
METHOD_STYLE = {  # one colour and marker per method, the same in every figure
    "standard": ("tab:gray", "o"), "pgd": ("tab:orange", "s"), "ibp": ("tab:blue", "^"),
    "mtl_ibp": ("tab:green", "D"), "cc_ibp": ("tab:olive", "P"), "exp_ibp": ("tab:cyan", "X"),
    "ad_cert": ("tab:red", "*"), "crown_ibp": ("tab:purple", "v"), "sabr": ("tab:brown", "<"),
    "cc_dist": ("tab:pink", "h"),
}


def method_style(method: str) -> tuple[str, str]:
    return METHOD_STYLE.get(method, ("black", "o"))


def save_figure(fig, path: Path) -> None:
    """Save ``fig`` as ``path`` (PNG) atomically: rendered in memory, then written through
    :func:`harness.rundir.atomic_write_bytes`, so a full disk leaves the previous figure and a one-line
    error naming the file."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
