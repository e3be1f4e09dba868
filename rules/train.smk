# One training run per target: results/STUDY/runs/{model}/{arm}/{variant}/seed{seed}/.


rule train:
    input:
        train_data,
    output:
        metrics=f"{RUN_DIR}/metrics.json",
        history=f"{RUN_DIR}/history.csv",
        spec=f"{RUN_DIR}/spec.json",
    log:
        L("train/{model}/{arm}/{variant}/seed{seed}.log"),
    params:
        fingerprint=lambda w: PLAN.fingerprint(PLAN.run_from_wildcards(w)),
        spec=lambda w: UntrackedArgument(f"@{spec_file(w)}"),
        launch=lambda w: UntrackedArgument(
            guarded(launcher(run_resources(w)["gpus"], run_resources(w)["nodes"], TORCHRUN, in_slurm_job(),
                             cpus_per_node=run_resources(w)["cpus_per_gpu"] * run_resources(w)["gpus"]))
        ),
        env=train_env,
        checkpoint_dir=R("checkpoints/{model}/{arm}/{variant}/seed{seed}"),
    threads: lambda w: run_resources(w)["cpus_per_gpu"] * run_resources(w)["gpus"]
    resources:
        nodes=lambda w: run_resources(w)["nodes"],
        gpu=gpu_request,
        # One torchrun per node starts the GPU processes itself: no task per GPU from Slurm.
        tasks_per_gpu=0,
        # Present, so the jobstep executor does not wrap the job in its own `srun ... snakemake`: the
        # shell's `srun torchrun` is then the step's top process and receives Slurm's signals
        # (docs/slurm.md). Zero, so the submission makes no MPI task checks.
        mpi=0,
        # SIGUSR1 two minutes before the time limit: the trainer checkpoints and exits, and the retry
        # resumes with a longer limit.
        slurm_extra=lambda w: slurm_extra(run_resources(w)),
        cpus_per_task=lambda w: run_resources(w)["cpus_per_gpu"] * run_resources(w)["gpus"],
        mem_mb=lambda w: run_resources(w)["mem_mb_per_gpu"] * run_resources(w)["gpus"],
        # GPU memory per run (0 when the study does not say): with --resources gpu_mem_mb=N, runs share a
        # GPU only as far as its memory allows
        gpu_mem_mb=lambda w: run_resources(w).get("gpu_mem_mb", 0) * run_resources(w)["gpus"],
        # A resubmitted job (after a failure or a preemption; the profiles set `retries`) resumes from
        # its checkpoint with more time. Not a rule-level `retries:`: that would also retry inside the
        # Slurm job, in an allocation that is being preempted or has run out of time.
        runtime=lambda w, attempt: run_resources(w)["runtime_min"] * attempt,
    conda:
        "../envs/train.yaml"
    shell:
        "{params.env} {params.launch} workflow/scripts/train.py --spec-json {params.spec:q}"
        " --out-dir $(dirname {output.metrics:q}) --checkpoint-dir {params.checkpoint_dir:q} > {log:q} 2>&1"
