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


if HUB_ITEMS:

    localrules:
        fetch_hub,

    localrules:
        pin_hub,

    rule fetch_hub:
        # A dataset's files or a model from the Hugging Face Hub at one commit (trainer/hub.py, docs/hub.md): a
        # local rule, since login nodes have the network and compute nodes often do not. Into the Hub cache
        # (HF_HOME), resumable, checked; results/hub/ITEM/ gets links and manifest.json last.
        output:
            manifest=f"{HUB_DIR}/{{item}}/manifest.json",
        log:
            "logs/hub/{item}.log",
        wildcard_constraints:
            item=one_of(HUB_ITEMS),
        params:
            # tracked: another repo, revision, file list or shard count fetches again
            request=lambda w: json.dumps(HUB_ITEMS[w.item], sort_keys=True),
            env=script_env,
            python=UntrackedArgument(shlex.quote(PYTHON)),
            args=lambda w: UntrackedArgument(
                " ".join(shlex.quote(a) for a in fetch_args(HUB_ITEMS[w.item], f"{HUB_DIR}/{w.item}"))
            ),
        conda:
            "../envs/train.yaml"
        shell:
            # the client's progress bars on the terminal and in the log
            "{params.env} {params.python} workflow/scripts/fetch_hub.py {params.args} 2>&1 | tee {log:q}"

    checkpoint pin_hub:
        # The commits and the data checksum the runs' specs carry, collected once every download and the data
        # stage ran (one checkpoint, so a dry run lists every download as a job).
        input:
            unpack(pin_hub_inputs),
        output:
            pins=R("hub_pins.json"),
        log:
            L("hub_pins.log"),
        params:
            env=script_env,
            python=UntrackedArgument(shlex.quote(PYTHON)),
            args=lambda w: UntrackedArgument(pin_hub_args()),
        conda:
            "../envs/train.yaml"
        shell:
            "{params.env} {params.python} workflow/scripts/pin_hub.py {params.args} --out {output.pins:q} > {log:q} 2>&1"
