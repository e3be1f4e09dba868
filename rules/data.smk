# The embedded corpus: bytes of this Python's standard library, built on the machine itself. Shared by
# every study (it depends on nothing a study sets). Seconds of work: it runs where Snakemake runs, never
# waiting in a cluster queue.


localrules:
    stdlib_corpus,


rule stdlib_corpus:
    output:
        train="results/data/stdlib/train.bin",
        val="results/data/stdlib/val.bin",
        manifest="results/data/stdlib/manifest.json",
    log:
        "logs/data/stdlib_corpus.log",
    params:
        env=script_env,
        python=UntrackedArgument(shlex.quote(PYTHON)),
    conda:
        "../envs/train.yaml"
    shell:
        "{params.env} {params.python} workflow/scripts/build_corpus.py --out-dir results/data/stdlib > {log:q} 2>&1"
