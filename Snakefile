# muon-ablations: optimizer ablation studies as a DAG.
#   snakemake --config tiny=true --cores 2 phase1          # the default study's CPU twin, minutes
#   snakemake --config study=ngpt tiny=true --cores 2 all  # another study's CPU twin
#   snakemake --profile slurm phase2                       # the real study on a Slurm cluster
# A study is config/studies/NAME.yaml; the plan (runs per phase, specs, fingerprints) lives in study/,
# the optimizers in optim/, the statistics in analysis/.

import json
import os
import re
import shlex
import sys
from pathlib import Path
from glob import glob

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


from study import Plan, PlanError, StudyFileError, launcher, load_study, read_selection
from study.launch import guarded, slurm_node_args, torchrun_executable
from study.external import trainer_name as external_trainer_name
from study.hub import HUB_DIR, fetch_args, fetch_items, is_shards
from study.spec import text_data_dir

# Every config error is reported here, in one line per problem, before any job is built or submitted.
try:
    STUDY, TINY, STUDY_FILE = load_study(config, workflow.basedir, overlays=workflow.overwrite_configfiles)
    STUDY_NAME = STUDY["study"]["name"]
    # The CPU twin has a directory of its own: it never overwrites the real study's tables.
    RESULTS = f"results/{STUDY_NAME}{'-tiny' if TINY else ''}"
    LOGS = f"logs/{STUDY_NAME}{'-tiny' if TINY else ''}"
    PLAN = Plan(STUDY, code_root=workflow.basedir, results=RESULTS, twin=TINY)
    # What the phases fetch from the Hub (a local rule: the login node has the network); planned offline.
    HUB_ITEMS = fetch_items(STUDY)
    TEXT_DATA_DIR = (text_data_dir(STUDY) if STUDY["data"]["kind"] == "text"
                     or (STUDY["data"]["kind"] == "hub" and not is_shards(STUDY["data"])) else None)
except (StudyFileError, PlanError) as err:
    raise WorkflowError(str(err)) from None


# The interpreter that runs Snakemake runs the scripts too (a venv need not be on PATH); with
# --sw-deployment-method conda, the rule's environment provides `python` instead.
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else sys.executable
TORCHRUN = "torchrun" if USE_CONDA else torchrun_executable()


include: "rules/common.smk"


if HUB_ITEMS and STUDY["data"]["kind"] in ("text", "hub"):
    PLAN.text_data_source = hub_data_spec
elif TEXT_DATA_DIR:
    PLAN.text_data_source = text_data_spec
PLAN.model_revision_source = hub_model_revision


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"
include: "rules/targets.smk"


check_targets()
if workflow.is_main_process:
    warn_underpowered()
