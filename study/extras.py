"""A study's own analysis stages ("extras"): one declaration each, built by one generic rule.

A phase asks for an extra with its key (`measure: {...}`: DisTrO's compression measurements on the captured
gradients; `pareto: true`: final loss against the bytes each rank sends). rules/analysis.smk makes one rule per
entry here, from the entry alone: its script, environment, outputs under results/STUDY/PHASE/, inputs and
params; rules/common.smk appends the entry's section output to the phase's section (and its plots among the
section's plots). A new extra: its script in workflow/scripts/ and one entry here (docs/extending.md).

`inputs` and each of `params` are functions of a context (rules/common.smk `extra_context`): .phase, .plan, .results,
.settings (the phase's value of `key`), .capture_runs() and .capture_files() (the phase's capture arms' runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Extra:
    rule: str  # the rule's name (also reserved: no phase may take it)
    key: str  # the phase key that asks for it (any value but false/absent)
    script: str  # workflow/scripts/SCRIPT
    env: str  # envs/ENV.yaml
    log: str  # logs/STUDY/PHASE/LOG
    outputs: dict  # output name -> path under results/STUDY/PHASE/
    section: str  # the output (a markdown file) appended to the phase's section
    inputs: Callable  # context -> {name: path or paths}
    params: dict  # param name -> function of the context
    plots: tuple = ()  # outputs shown among the section's plots
    report: dict = field(default_factory=dict)  # output -> (subcategory, caption) in `snakemake --report`
    all_cores: bool = False  # threads: every core the invocation has (else 1)
    schema: dict = field(default_factory=lambda: {"type": "boolean"})  # JSON schema of the phase key's value


EXTRAS = {
    # DisTrO's compression measurements (seed 004) on the real gradients and momenta the phase's capture arms
    # wrote, beside Gaussian and low-rank matrices of the same shapes. The GPU when there is one (batched SVDs);
    # else every core, one SVD per thread.
    "measure": Extra(
        rule="distro_measure", key="measure", script="distro_measure.py", env="train", log="measure.log",
        outputs={"tables": "measure.csv", "spectra": "measure_spectra.csv", "md": "measure.md"}, section="md",
        inputs=lambda x: {"runs": x.capture_runs()},
        params={"captures": lambda x: x.capture_files(), "topk": lambda x: x.settings["topk"],
                "cond_topk": lambda x: x.settings["cond_topk"], "chunk": lambda x: x.settings["chunk"],
                "max_per_file": lambda x: x.settings.get("max_per_file")},
        all_cores=True,
        schema={"description": "DisTrO's compression measurements (seed 004) on the gradients the phase's capture "
                               "arms wrote, beside synthetic matrices of the same shapes (analysis/distro_measure.py)",
                "type": "object", "additionalProperties": False,
                "properties": {
                    "topk": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                             "minItems": 1, "default": [0.01, 0.05, 0.1, 0.25]},
                    "cond_topk": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                                  "minItems": 1, "default": [0.05, 0.1, 0.25]},
                    "chunk": {"$ref": "#/$defs/positive_int", "default": 64},
                    "max_per_file": {"$ref": "#/$defs/positive_int"}}}),
    # Final loss against the bytes each rank sends per step, for a phase of compressed data-parallel arms.
    "pareto": Extra(
        rule="pareto_plot", key="pareto", script="pareto.py", env="analysis", log="pareto.log",
        outputs={"png": "plots/pareto.png", "md": "pareto.md"}, section="md", plots=("png",),
        report={"png": ("plots", "../report/pareto.rst")},
        inputs=lambda x: {"runs": f"{x.results}/{x.phase}/runs.csv"},
        params={"phase": lambda x: x.phase, "baseline": lambda x: x.plan.baseline_arm(x.phase)},
        schema={"description": "plot final loss against the bytes each rank sends per step (compressed "
                               "data-parallel arms)", "type": "boolean"}),
}


def extras_of(phase_config: dict) -> list[Extra]:
    """The extras a phase asks for, in EXTRAS order."""
    return [e for e in EXTRAS.values() if phase_config.get(e.key) not in (None, False)]


def with_extras(schema: dict) -> dict:
    """config/schema.yaml with each extra's phase key (its declared schema) added to the phase's keys."""
    phase = schema["$defs"]["phase"]["properties"]
    for e in EXTRAS.values():
        phase.setdefault(e.key, e.schema)
    return schema
