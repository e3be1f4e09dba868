"""`muon-ablations`: look at a study's runs from the shell (runs, show, diff, status). Read-only: it reads
the study file, the plan (study/) and the records the workflow writes; it takes no Snakemake lock, so it
can run on a login node while Snakemake runs."""
