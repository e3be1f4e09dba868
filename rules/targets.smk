# What a user asks for: one target per phase of the selected study (`snakemake phase2`,
# `snakemake --config study=ngpt lr_sweep`), and `all`. Each asks for its report and for the run records
# of every phase through it, so a record that went missing is trained again.


localrules:
    all,


rule all:
    default_target: True
    input:
        phase_target_inputs(PLAN.phases[-1]),


for _phase in PLAN.phases:

    rule:
        name:
            _phase
        localrule: True
        input:
            phase_target_inputs(_phase),

