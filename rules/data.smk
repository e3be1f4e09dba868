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


if TEXT_DATA_DIR:

    checkpoint prepare_text:
        # The study's own text (data.kind text) tokenized into shards and a manifest with their content
        # checksum (docs/data.md). A checkpoint: the runs' specs carry that checksum, known once this ran.
        input:
            text_inputs,
        output:
            manifest=f"{TEXT_DATA_DIR}/manifest.json",
        log:
            "logs/data/prepare_text.log",
        params:
            # tracked: the stage's every setting (its inputs' mtimes alone missed a new tokenizer or val_fraction)
            settings=lambda w: text_stage_settings(),
            env=script_env,
            python=UntrackedArgument(shlex.quote(PYTHON)),
            args=lambda w: UntrackedArgument(text_prep_args()),
        threads: 2
        conda:
            "../envs/train.yaml"
        shell:
            "{params.env} {params.python} workflow/scripts/prepare_text.py {params.args} --workers {threads}"
            " > {log:q} 2>&1"
