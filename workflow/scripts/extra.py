"""Snakemake script of every extra (study/extras.py): runs the extra's own script, the one its entry names.

One script for the one generic rule: Snakemake runs a rule's `script:` when the job runs, so a rule made in a
loop cannot name its script by the loop's variable; this looks the entry up by the job's rule name.
"""
import runpy
from pathlib import Path

import _script  # beside this file (Snakemake puts the scripts' directory on sys.path)

from study.extras import EXTRAS

sm = snakemake  # noqa: F821
extra = next(e for e in EXTRAS.values() if e.rule == sm.rule)
runpy.run_path(str(Path(_script.__file__).resolve().parent / extra.script), init_globals={"snakemake": sm},
               run_name="__main__")
