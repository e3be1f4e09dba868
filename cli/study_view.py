"""A study as the CLI sees it: its plan (the project's own study/ code), where its records are, and the
phases' runs. Nothing here writes a file or imports torch, pandas or Snakemake."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from study import Plan, PlanError, StudyFileError, load_study, read_selection
from study.load import available_studies, deep_merge, read_yaml
from study.plan import PhaseRun, Run
from study.spec import text_data_dir


class CliError(RuntimeError):
    """A request the CLI cannot answer (an unknown study, run or phase): one line, naming what is allowed."""


@dataclass
class PhaseRuns:
    phase: str
    planned: int  # runs the phase will have (every selection gives a phase the same number)
    runs: list[PhaseRun] | None  # None while its selection is not known
    note: str = ""  # why runs is None


@dataclass
class StudyView:
    root: Path
    name: str  # the study's name (results/NAME[-tiny]/)
    label: str  # NAME or NAME-tiny
    tiny: bool
    config: dict
    plan: Plan
    _phase_runs: dict = field(default_factory=dict)

    @property
    def results(self) -> str:
        return f"results/{self.label}"

    @property
    def logs(self) -> str:
        return f"logs/{self.label}"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def log_of(self, run: Run) -> Path:
        return self.root / f"{self.logs}/train/{run.key}.log"

    def phases(self, only: list[str] | None = None) -> list[str]:
        if not only:
            return self.plan.phases
        for p in only:
            if p not in self.plan.phases:
                raise CliError(f"phase {p!r} is not a phase of study {self.label} "
                               f"(its phases: {', '.join(self.plan.phases)})")
        return [p for p in self.plan.phases if p in only]

    def phase_runs(self, phase: str) -> PhaseRuns:
        """The phase's runs; a selecting phase's only once its selection.json exists and lets it run."""
        if phase in self._phase_runs:
            return self._phase_runs[phase]
        plan, cfg = self.plan, self.plan.phase(phase)
        planned = len(plan.phase_runs(phase, plan.possible_selections(phase)[0]))
        if not plan.needs_selection(phase):
            out = PhaseRuns(phase, planned, plan.phase_runs(phase))
        else:
            from study.selections import declared, stop_reason

            source = ", ".join(dict.fromkeys(d["from"] for d in declared(cfg)))
            sel_path = self.path(f"{self.results}/{phase}/selection.json")
            if not sel_path.exists():
                out = PhaseRuns(phase, planned, None, f"waits for {source}'s selection")
            else:
                sel = read_selection(sel_path)
                stop = stop_reason(sel, bool(cfg.get("force", False)))
                if stop and stop[0] == "gate":
                    out = PhaseRuns(phase, planned, None, f"stopped: the {source} gate did not pass")
                elif stop:
                    out = PhaseRuns(phase, planned, None, f"stopped: nothing of {source} could be selected")
                else:
                    out = PhaseRuns(phase, planned, plan.phase_runs(phase, sel))
        self._phase_runs[phase] = out
        return out

    def runs(self, phases: list[str] | None = None) -> dict[Run, list[PhaseRun]]:
        """Every known run of these phases (a run several phases list once), with its phases' views."""
        out: dict[Run, list[PhaseRun]] = {}
        for phase in self.phases(phases):
            for pr in self.phase_runs(phase).runs or []:
                out.setdefault(pr.run, []).append(pr)
        return out

    def planned_fingerprint(self, run: Run) -> str | None:
        """The fingerprint the plan gives the run now (None when the text corpus is not prepared yet)."""
        try:
            return self.plan.fingerprint(run)
        except Exception:  # noqa: BLE001 - e.g. the text corpus not prepared yet: the plan cannot say
            return None

    def find_run(self, text: str) -> Run:
        """A run named by its key (model/arm/variant/seedN), its run directory, or a unique part of its key."""
        key = text.strip().rstrip("/")
        if key.startswith(f"{self.results}/runs/"):
            key = key[len(f"{self.results}/runs/"):]
        elif "/runs/" in key:
            key = key.split("/runs/", 1)[1]
        runs = list(self.runs())
        exact = [r for r in runs if r.key == key]
        if exact:
            return exact[0]
        parts = key.split("/")
        if len(parts) == 4 and parts[3].startswith("seed") and parts[3][4:].isdigit():
            try:  # a run no phase lists now (e.g. a value removed from a sweep) can still be looked at
                return self.plan.run_from_wildcards(dict(zip(("model", "arm", "variant"), parts[:3]),
                                                         seed=parts[3][4:]))
            except PlanError:
                pass
        matches = [r for r in runs if key in r.key]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise CliError(f"no run of study {self.label} matches {text!r} (a run is MODEL/ARM/VARIANT/seedN, "
                           f"e.g. {runs[0].key if runs else 'tiny/muon/alpha0/seed0'}; `muon-ablations runs` lists them)")
        shown = ", ".join(r.key for r in matches[:6]) + (", ..." if len(matches) > 6 else "")
        raise CliError(f"{text!r} matches {len(matches)} runs of study {self.label} ({shown}); give more of its key")


def open_study(root: str | Path = ".", study: str | None = None, tiny: bool | None = None,
               overrides: dict | None = None) -> StudyView:
    """The study Snakemake would run from `root` with `--config study=STUDY tiny=TINY` (and overrides)."""
    root = Path(root).resolve()
    if not (root / "config" / "config.yaml").exists():
        raise CliError(f"{root} is not a muon-ablations checkout (no config/config.yaml); run the command "
                       "in the repository root or pass --root DIR")
    config = read_yaml(root / "config" / "config.yaml")
    if overrides:
        config = deep_merge(config, overrides)
    if study is not None:
        config["study"] = study
    if tiny is not None:
        config["tiny"] = tiny
    try:
        cfg, is_tiny, _ = load_study(config, root)
        name = cfg["study"]["name"]
        label = f"{name}{'-tiny' if is_tiny else ''}"
        plan = Plan(cfg, code_root=root, results=f"results/{label}")
    except (StudyFileError, PlanError) as e:
        raise CliError(str(e)) from None
    if cfg["data"]["kind"] == "text":  # the prepared corpus's checksum is part of every fingerprint
        manifest = root / text_data_dir(cfg) / "manifest.json"

        def text_source():
            from trainer.textprep import spec_data

            return spec_data(str(manifest))

        plan.text_data_source = text_source
    return StudyView(root, name, label, is_tiny, cfg, plan)


def study_names(root: str | Path) -> list[str]:
    return available_studies(Path(root).resolve())
