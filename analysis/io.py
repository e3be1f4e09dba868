"""Small shared helpers: atomic writes, JSON sanitising, Markdown tables, logging for Snakemake scripts."""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from trainer.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (imported from here)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Atomic CSV; NaN is written as an empty cell (so 'no p-value' is empty, never a number)."""
    atomic_write_text(path, df.to_csv(index=False, na_rep="", float_format="%.10g"))


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    try:
        return pd.read_csv(path, keep_default_na=True)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def clean(obj: Any) -> Any:
    """Turn numpy scalars into Python ones and non-finite floats into None (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write_text(path, json.dumps(clean(obj), indent=2, allow_nan=False) + "\n")


def is_num(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x: Any, digits: int = 4, pct: bool = False, sig: bool = False) -> str:
    """Format a number for a table; empty string for missing/NaN."""
    if x is None:
        return ""
    if isinstance(x, str):
        return x
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(f):
        return ""
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    if pct:
        return f"{f:+.{digits}f}%"
    if sig:
        return f"{f:.{digits}g}"
    return f"{f:.{digits}f}"


def fmt_alpha(a: Any) -> str:
    if not is_num(a):
        return "-"
    return format(float(a), "g")


_TAGGY = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=#?\w+;)")


def md_escape(s: Any) -> str:
    """A table cell: no raw HTML (a '<' that could open a tag and a '&' that could start an entity are
    escaped, so user text such as a <script> tag stays text; '<= 0.9' stays readable), no pipes or
    newlines that would break the row."""
    s = _ENTITY.sub("&amp;", str(s))
    s = _TAGGY.sub("&lt;", s).replace("-->", "--&gt;")
    return s.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


_MD_SPECIAL = "\\`*_{}[]()#+!<>&|~"


def md_text(s: Any) -> str:
    """User text (a study's title or question) in running Markdown: HTML-escaped and Markdown
    punctuation backslash-escaped, so it renders as the literal text in Markdown and in HTML."""
    out = []
    for ch in str(s).replace("\r", " ").replace("\n", " "):
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ch in _MD_SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def fmt_p(p: Any) -> str:
    """Every p-value of the report in one format: three decimals, '<0.001' below."""
    if not is_num(p):
        return "n/a"
    p = float(p)
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table from already formatted cells."""
    headers = [md_escape(h) for h in headers]
    align = align or ["---"] * len(headers)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(md_escape(c) for c in r) + " |")
    return "\n".join(lines) + "\n"


def as_list(x: Any) -> list:
    """Snakemake named inputs may be a single str or a list-like; always return a list."""
    if x is None:
        return []
    if isinstance(x, (str, os.PathLike)):
        return [str(x)]
    return [str(v) if isinstance(v, os.PathLike) else v for v in x]


def setup_logging(log_path: str | None) -> logging.Logger:
    """Log to the Snakemake log file (and stderr) with timestamps."""
    logger = logging.getLogger("analysis")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w", encoding="utf-8"))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    return logger
