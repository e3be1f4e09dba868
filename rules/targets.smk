# What a user asks for: `snakemake phase1`, `phase2`, `phase3`, `all`.


localrules:
    all,
    phase1,
    phase2,
    phase3,


rule all:
    default_target: True
    input:
        f"results/reports/{PLAN.phases[-1]}.md",


rule phase1:
    input:
        "results/reports/phase1.md",


rule phase2:
    input:
        "results/reports/phase2.md",


rule phase3:
    input:
        "results/reports/phase3.md",
