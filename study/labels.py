"""Path labels: how a swept value is written in a run's directory name (runs/MODEL/ARM/LABEL/seedN).

Their own module, below both study/plan.py (which names runs) and study/checks.py (which refuses two values
that would make one label for an arm), so neither imports the other to reach them.
"""

from __future__ import annotations


def fmt_value(value) -> str:
    """A swept value as written in run paths, exactly: 1.0e-3 -> '0.001', 3 -> '3', 2.5e-5 -> '2.5e-05'.

    Python's repr is the shortest string that reads back to the same float, so no two values share a
    label and the value parsed from a path is the value configured.
    """
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


def variant_label(param: str, value) -> str:
    short = param.rsplit(".", 1)[-1]
    text = fmt_value(value)
    return f"{short}{text}" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{short}-{text}"
