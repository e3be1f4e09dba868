# muon-ablations: an optimizer ablation study as a DAG.
#   snakemake --configfile config/tiny.yaml --cores 2 phase1   # the CPU twin, minutes
#   snakemake --profile slurm phase2                            # the real study on a Slurm cluster
# The plan (runs per phase, specs, fingerprints) lives in study/; the optimizers in optim/.

import json
import os
import sys
from glob import glob

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


from study import Plan, PlanError, launcher, read_selection
from study.config_errors import explain
from study.launch import torchrun_executable

# Every config error is reported here, before any job is built or submitted.
try:
    validate(config, "config/schema.yaml")
except WorkflowError:
    raise WorkflowError(explain(config, "config/schema.yaml")) from None

try:
    PLAN = Plan(config, code_root=workflow.basedir)
except PlanError as err:
    raise WorkflowError(str(err)) from None


# The interpreter that runs Snakemake runs the scripts too (a venv need not be on PATH); with
# --sw-deployment-method conda, the rule's environment provides `python` instead.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else sys.executable
TORCHRUN = "torchrun" if USE_CONDA else torchrun_executable()


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"
include: "rules/targets.smk"
