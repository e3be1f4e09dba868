"""What every analysis script of the workflow starts with: the packages importable (from the checkout
when they are not installed, as in the conda environments of envs/), logging into the rule's log file,
and a failure logged there before it propagates."""
import sys
from contextlib import contextmanager
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from analysis.io import setup_logging


@contextmanager
def logged(snakemake, what: str):
    log = setup_logging(snakemake.log[0] if snakemake.log else None)
    try:
        yield log
    except Exception:
        log.exception("%s failed", what)
        raise
