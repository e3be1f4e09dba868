"""Every check a study passes before any job is built: the schema, then what a schema cannot say.

Each problem is one line: the dotted key, the value, what is allowed. All problems are reported at
once. The declarations checked against live with their owners and are read without importing them:
optimizer classes and their keyword arguments in optim/registry.py, gate kinds in analysis/gate_kinds.py, model presets
and run-spec fields in trainer/spec.py.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import math
import os
import re
from pathlib import Path

import jsonschema

from study import external
from study.config_errors import NUMBER_LIKE, describe
from study.load import apply_defaults, non_finite_numbers
from study.extras import EXTRAS, with_extras
from study.labels import variant_label
from study import selections as sels
from study.hub import MODEL_TOKENIZER, check_hub_data, hub_model_id, is_shards
from study.spec import eval_at_steps, load_file_module, optimizer_registry, text_data_dir

SELECTED = "selected"
PATH_SAFE = re.compile(r"^[A-Za-z0-9_.-]+\Z")  # \Z: $ would pass a trailing newline
# Names a phase cannot take: the workflow's rules and targets, and the directories beside the phases'.
RESERVED_PHASES = ("all", "design", "design_phase", "train", "aggregate", "significance", "gates", "plots",
                   "select", "section", "report", "stdlib_corpus", "prepare_text", "runs", "checkpoints", "reports",
                   "data") + tuple(e.rule for e in EXTRAS.values())  # and the extras' rules (study/extras.py)
# Training settings a model owns; an arm may own the trainer's others (warmup, projection frequency...).
MODEL_TRAINING_KEYS = ("steps", "global_batch", "micro_batch", "seq_len")
TRAINING_KINDS = {"warmup_steps": "int>=0", "cooldown_frac": "fraction", "grad_clip": "nonnegative",
                  "divergence_factor": "positive", "projection_every": "int>=1"}
NOISE_ONLY = ("alpha_end_ratio",)  # the study's way to write alpha_end = alpha x ratio


class PlanError(ValueError):
    """A study that does not make a coherent plan."""


def _strict_validator(schema: dict):
    # JSON Schema's "integer" accepts 200.0; a step count written as a float is a mistake here.
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, x: isinstance(x, int) and not isinstance(x, bool))
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker)
    return cls(schema)


def read_schema(root: Path) -> dict:
    import yaml

    return with_extras(yaml.safe_load((Path(root) / "config" / "schema.yaml").read_text()))


def schema_problems(config: dict, root: Path) -> list[str]:
    return sorted(describe(e) for e in _strict_validator(read_schema(root)).iter_errors(config))


def kind_problem(kind, value, registry=None) -> str | None:
    """None when `value` is allowed by an optim/registry.py kind, else what is allowed."""
    if kind is not None and isinstance(value, str) and NUMBER_LIKE.match(value) and not isinstance(kind, tuple):
        return ("it is a string, not a number; write it with a decimal point (e.g. 1.0e-3): YAML 1.1 reads "
                "1e-3 as text")
    return (registry or optimizer_registry()).kind_problem(kind, value)


def run_entries(phase: dict) -> list[dict]:
    """The phase's run entries, the baseline first (written as a name or as an entry)."""
    base = phase["baseline"]
    return [base if isinstance(base, dict) else {"arm": base}] + list(phase.get("runs", []))


def selectable_arms(config: dict, phase: str, ref: str = SELECTED, _seen: frozenset = frozenset()) -> set[str]:
    """The arms a selection (`ref`: 'selected' or 'selected:NAME') of a phase can take from the phase it
    selects from (its arms, else that phase's run arms, an arm it selected itself standing for the arms it
    could select)."""
    decl = sels.refs(config["phases"][phase]).get(ref)
    if not decl or phase in _seen or decl.get("from") not in config["phases"]:
        return set()
    if decl.get("arms"):
        return set(decl["arms"])
    out = set()
    for entry in config["phases"][decl["from"]].get("runs", []):
        out |= (selectable_arms(config, decl["from"], entry["arm"], _seen | {phase}) if sels.is_ref(entry["arm"])
                else {entry["arm"]})
    return out


def later_selections(config: dict, phase: str) -> dict[str, list[tuple[str, dict]]]:
    """{reference: [(later phase, declaration)]} of the later phases' selections from this phase: what a
    gate's 'selected' / 'selected:NAME' means in a phase that selects nothing itself (every later selection
    from it is 'selected'; a named one is also 'selected:NAME')."""
    out: dict[str, list] = {}
    for q, cfg in config["phases"].items():
        for d in sels.declared(cfg):
            if d.get("from") == phase:
                out.setdefault(SELECTED, []).append((q, d))
                if d["name"] is not None:
                    out.setdefault(sels.ref_of(d["name"]), []).append((q, d))
    return out


def pick_of(decls: list[tuple[str, dict]]) -> dict | None:
    """The one {arms, rule} a set of later selections agree on (None when they differ)."""
    picks = [{"arms": d.get("arms"), "rule": d.get("rule") or "significant_best"} for _, d in decls]
    return picks[0] if picks and all(p == picks[0] for p in picks) else None


def variant_table(config: dict) -> dict:
    """arm -> {path label -> (param, value)} over every sweep of the study; PlanError when two values would
    make the same label for one arm (its runs would share a directory, runs/MODEL/ARM/LABEL/seedN).

    Labels belong to an arm: the same lr grid for adamw.lr in one arm and muon.lr in another is two sets of
    directories. A sweep of `arm: selected` labels every arm the phase can select; an arm that takes the
    value selected (`value: selected`) takes the labels of the phase selected from, for the arms it selects
    among."""
    tables: dict[str, dict] = {}
    where: dict[tuple, str] = {}
    after: dict[str, dict] = {}  # the tables as each phase left them (what a later phase selects among)

    def add(arm, label, setting, key):
        table = tables.setdefault(arm, {})
        if label in table and table[label] != setting:
            raise PlanError(f"{key}: {setting[0]}={setting[1]!r} and {table[label][0]}={table[label][1]!r} "
                            f"({where[arm, label]}) both make the path label {label!r} for arm {arm}: their runs "
                            f"would share runs/MODEL/{arm}/{label}/; sweep one of them in another arm")
        table[label] = setting
        where.setdefault((arm, label), key)

    for pname, phase in config["phases"].items():
        decls = sels.refs(phase)
        for i, entry in enumerate(run_entries(phase)):
            key = f"phases.{pname}.runs[{i - 1}]" if i else f"phases.{pname}.baseline"
            arms = selectable_arms(config, pname, entry["arm"]) if sels.is_ref(entry["arm"]) else {entry["arm"]}
            # the selection whose value the entry takes: its arm's ('selected:X' as arm), else its value's
            ref = entry["arm"] if sels.is_ref(entry["arm"]) else entry.get("value")
            if sels.is_ref(entry.get("value")) and ref in decls:
                chosen = selectable_arms(config, pname, ref)
                upstream = after.get(decls[ref]["from"], {})
                for arm in sorted(arms):
                    for cand in sorted(chosen):
                        for label, setting in upstream.get(cand, {}).items():
                            add(arm, label, setting, where.get((cand, label), key))
            sweep = entry.get("sweep")
            if not sweep:
                continue
            for value in sweep["values"]:
                for arm in sorted(arms):
                    add(arm, variant_label(sweep["param"], value), (sweep["param"], value), f"{key}.sweep")
        after[pname] = copy.deepcopy(tables)
    unswept = config["study"]["unswept_variant"]
    for arm, table in tables.items():
        if unswept in table:
            raise PlanError(f"study.unswept_variant: {unswept!r} is also the label of {table[unswept][0]}="
                            f"{table[unswept][1]!r} ({where[arm, unswept]})")
    return tables


class _Checks:
    def __init__(self, config: dict, root: Path):
        self.c = config
        self.root = root
        self.problems: list[str] = []
        self.args = optimizer_registry(root)
        self.gate_kinds = load_file_module(root, "analysis/gate_kinds.py")
        self.trainer_spec = load_file_module(root, "trainer/spec.py")
        self.tokenizer_vocab: int | None = None  # text data: the tokenizer's vocabulary size

    def bad(self, msg: str) -> None:
        self.problems.append(msg)

    # -- optimizers --------------------------------------------------------------------------------
    def class_args(self, cls: str) -> dict | None:
        return self.args.OPTIMIZER_ARGUMENTS.get(cls)

    def kind_problem(self, kind, value) -> str | None:
        return kind_problem(kind, value, self.args)

    def settable(self, arm: str, param: str) -> str | None:
        """None when the arm can take `param` (section.key), else what it can take."""
        cls = self.c["arms"][arm]["class"]
        section, key = param.split(".", 1)
        if section == "muon":
            allowed = set(self.class_args(cls) or {}) | (set(NOISE_ONLY) if "alpha" in (self.class_args(cls) or {})
                                                           else set())
        elif section == "adamw":
            allowed = set(self.args.ADAMW_ARGUMENTS)
        elif section == "training":
            fields = {f.name for f in dataclasses.fields(self.trainer_spec.TrainingSpec)}
            allowed = fields - set(MODEL_TRAINING_KEYS)
        else:  # model options: the model checks them when it is built
            return None
        return None if key in allowed else f"not a setting of arm {arm} (class {cls}); allowed {section} " \
                                           f"settings: {', '.join(sorted(allowed)) or 'none'}"

    def value_kind(self, arm: str, param: str):
        cls = self.c["arms"][arm]["class"]
        section, key = param.split(".", 1)
        if section == "muon":
            return (self.class_args(cls) or {}).get(key, "nonnegative" if key in NOISE_ONLY else None)
        if section == "adamw":
            return self.args.ADAMW_ARGUMENTS.get(key)
        if section == "training":
            return TRAINING_KINDS.get(key)
        return None

    def check_arms(self) -> None:
        known = sorted(self.args.OPTIMIZERS)
        for arm, a in self.c["arms"].items():
            cls = a["class"]
            if cls not in known:
                self.bad(f"arms.{arm}.class: {cls!r} is not an optimizer class (known: {', '.join(known)})")
                continue
            for section in ("muon", "adamw", "training"):
                for key, value in a.get(section, {}).items():
                    why = self.settable(arm, f"{section}.{key}")
                    if why:
                        self.bad(f"arms.{arm}.{section}.{key}: {why}")
                        continue
                    what = self.kind_problem(self.value_kind(arm, f"{section}.{key}"), value)
                    if what:
                        self.bad(f"arms.{arm}.{section}.{key}: {value!r} is not allowed ({what})")
            if not self.class_args(cls) and a.get("muon"):
                self.bad(f"arms.{arm}.muon: class {cls} takes no muon settings (set them under adamw)")
            muon = {**self.c["optimizer_defaults"]["muon"], **a.get("muon", {})}
            if muon.get("schedule") in ("exponential", "linear") and not (
                    "alpha_end_ratio" in muon or "half_life" in muon or "alpha_end" in muon):
                self.bad(f"arms.{arm}.muon.schedule: {muon['schedule']!r} needs alpha_end_ratio "
                         "(or half_life for exponential)")
            if muon.get("schedule") == "exponential" and "alpha_end_ratio" in muon and "half_life" in muon:
                self.bad(f"arms.{arm}.muon: give alpha_end_ratio or half_life, not both")
        every = set().union(*(set(v) for v in self.args.OPTIMIZER_ARGUMENTS.values()))
        for key, value in self.c["optimizer_defaults"]["muon"].items():
            if key not in every:
                self.bad(f"optimizer_defaults.muon.{key}: not a setting of any optimizer class "
                         f"(known: {', '.join(sorted(every))})")
            else:
                kinds = {v.get(key) for v in self.args.OPTIMIZER_ARGUMENTS.values() if key in v}
                for kind in kinds:
                    what = self.kind_problem(kind, value)
                    if what:
                        self.bad(f"optimizer_defaults.muon.{key}: {value!r} is not allowed ({what})")
                        break
        for key, value in self.c["optimizer_defaults"]["adamw"].items():
            if key not in self.args.ADAMW_ARGUMENTS:
                self.bad(f"optimizer_defaults.adamw.{key}: not an AdamW setting "
                         f"(known: {', '.join(self.args.ADAMW_ARGUMENTS)})")
            else:
                what = self.kind_problem(self.args.ADAMW_ARGUMENTS[key], value)
                if what:
                    self.bad(f"optimizer_defaults.adamw.{key}: {value!r} is not allowed ({what})")

    # -- models and data ---------------------------------------------------------------------------
    def check_models(self) -> None:
        presets = self.trainer_spec.MODEL_PRESETS
        for name, m in self.c["models"].items():
            arch = m["arch"]
            if "revision" in m and not hub_model_id(arch):
                self.bad(f"models.{name}.revision: {m['revision']!r}: only for hf:<Hub id> models")
            if arch.startswith("hf:"):
                path = Path(arch[3:])
                # a Hub id is fetched by fetch_hub (never contacted here)
                if not hub_model_id(arch) and not (path if path.is_absolute() else Path.cwd() / path).is_dir():
                    self.bad(f"models.{name}.arch: {arch!r}: no such directory (hf:<local path to a "
                             "Hugging Face model directory>, or hf:<owner/name> on the Hub)")
            elif arch not in presets and external.uses_builtin_trainer(self.c, name):
                self.bad(f"models.{name}.arch: {arch!r} is not allowed (one of {', '.join(presets)}, "
                         "hf:<local path> or hf:<owner/name> on the Hub)")
            gpus = m["resources"]["gpus"] * m["resources"]["nodes"]
            if m["global_batch"] % m["micro_batch"]:
                self.bad(f"models.{name}: global_batch {m['global_batch']} is not a multiple of "
                         f"micro_batch {m['micro_batch']}")
            elif m["global_batch"] % (m["micro_batch"] * gpus):
                self.bad(f"models.{name}: global_batch {m['global_batch']} is not a multiple of "
                         f"micro_batch x GPUs = {m['micro_batch'] * gpus}")
            over = [s for s in eval_at_steps(self.c, name) if s > m["steps"]]
            for arm, a in self.c["arms"].items():
                late = [s for s in a.get("capture", {}).get("steps", []) if s > m["steps"]]
                if late and self.uses(name, arm):
                    self.bad(f"arms.{arm}.capture.steps: {late} are beyond the {m['steps']} steps of model {name}, "
                             f"which runs this arm")
            if over:
                self.bad(f"models.{name}: eval_at_steps {over} are beyond its {m['steps']} steps (give the "
                         f"model its own eval_at_steps)")

    def check_data(self) -> None:
        d = self.c["data"]
        if d["kind"] == "hub":
            return self.check_hub_data(d)
        if d["kind"] == "bin":
            for key in ("train", "val"):
                if not glob.glob(d[key]):
                    self.bad(f"data.{key}: {d[key]!r} matches no file (relative to {os.getcwd()})")
        if d["kind"] != "text":
            for key in sorted(set(d) - {"kind", "train", "val"}):
                self.bad(f"data.{key}: only for data.kind text")
            return
        from trainer.textprep import DataError, prep_config
        from trainer.tokenizer import TokenizerError, check_vocab_fits, model_vocab_size, tokenizer_vocab_size

        try:
            prep_config({k: v for k, v in d.items() if k != "name"}, text_data_dir(self.c))
            self.tokenizer_vocab = tokenizer_vocab_size(d["tokenizer"])
        except (DataError, TokenizerError) as e:
            self.bad(str(e))
            return
        for name, m in self.c["models"].items():
            try:
                if m["arch"].startswith("hf:") and Path(m["arch"][3:]).is_dir():
                    check_vocab_fits(self.tokenizer_vocab, model_vocab_size(m["arch"]), f"models.{name} ({m['arch']})")
                elif "vocab_size" in m:
                    check_vocab_fits(self.tokenizer_vocab, m["vocab_size"], f"models.{name}.vocab_size")
            except TokenizerError as e:
                self.bad(f"data.tokenizer: {e}")

    def check_hub_data(self, d: dict) -> None:
        """kind hub: the request (no network); raw files: the text stage's settings and the vocabulary."""
        from trainer.textprep import DataError, prep_config
        from trainer.tokenizer import TokenizerError, check_vocab_fits, tokenizer_vocab_size

        problems = check_hub_data(d, self.c)
        for p in problems:
            self.bad(p)
        if problems or is_shards(d):
            return
        text = {k: v for k, v in d.items() if k not in ("kind", "name", "repo", "revision", "files")}
        if text.get("tokenizer") == MODEL_TOKENIZER:
            text["tokenizer"] = "bpe:257"  # the model's own, read once fetched: its other settings checked here
        try:
            prep_config({"inputs": ["fetched"], **text}, "unused")
            if d["tokenizer"] != MODEL_TOKENIZER:
                self.tokenizer_vocab = tokenizer_vocab_size(d["tokenizer"])
        except (DataError, TokenizerError) as e:
            self.bad(str(e))
            return
        for name, m in self.c["models"].items():
            if self.tokenizer_vocab is not None and "vocab_size" in m:
                try:
                    check_vocab_fits(self.tokenizer_vocab, m["vocab_size"], f"models.{name}.vocab_size")
                except TokenizerError as e:
                    self.bad(f"data.tokenizer: {e}")

    def uses(self, model: str, arm: str) -> bool:
        """Whether some phase runs this arm on this model."""
        for p in self.c["phases"].values():
            models = {p["model"]} | ({p["scratch"]["model"]} if "scratch" in p else set())
            if model in models and any(e["arm"] == arm or sels.is_ref(e["arm"]) for e in run_entries(p)):
                return True
        return False

    # -- phases ------------------------------------------------------------------------------------
    def is_evaluated(self, model: str, step: int) -> bool:
        """Whether the model's runs evaluate `step` (arithmetic, not a set of every step: steps may be huge)."""
        m, every = self.c["models"][model], self.c["training_defaults"]["eval_every"]
        return (step in eval_at_steps(self.c, model) or step == m["steps"]
                or (every > 0 and 0 < step <= m["steps"] and step % every == 0))

    def evaluated_steps_text(self, model: str) -> str:
        m, every = self.c["models"][model], self.c["training_defaults"]["eval_every"]
        listed = sorted(set(eval_at_steps(self.c, model)) | {m["steps"]})
        return ", ".join(map(str, listed)) + (f" and every multiple of {every}" if every > 0 else "")

    def check_phases(self) -> None:
        names = list(self.c["phases"])
        for pname, p in self.c["phases"].items():
            where = f"phases.{pname}"
            if pname in RESERVED_PHASES:
                self.bad(f"{where}: {pname!r} is a rule or directory of the workflow; name the phase otherwise")
            models = [p["model"]] + ([p["scratch"]["model"]] if "scratch" in p else [])
            for key, model in zip(("model", "scratch.model"), models):
                if model not in self.c["models"]:
                    self.bad(f"{where}.{key}: {model!r} is not in models (known: {', '.join(sorted(self.c['models']))})")
            valid = self.check_selections(where, pname, p, names)
            for key in ("force",):
                if key in p and "select" not in p:
                    self.bad(f"{where}.{key}: only meaningful with select")
            if "scratch" in p:
                if "select" not in p:
                    self.bad(f"{where}.scratch: needs select (the scratch pair uses the selected arm)")
                name = p["scratch"].get("selection")
                named = [d["name"] for d in sels.declared(p) if d["name"] is not None]
                if "select" in p and sels.ref_of(name) not in sels.refs(p):
                    self.bad(f"{where}.scratch.selection: {name!r} " + (
                        "is missing: the phase declares several selections; name the one whose arm the scratch "
                        "pair trains" if name is None else "names no selection of this phase")
                        + f" (allowed: {', '.join(named) or 'none'})")
                if p["scratch"]["model"] == p["model"]:
                    self.bad(f"{where}.scratch.model: {p['model']!r} is the phase's model too; the scratch pair "
                             "needs a model entry of its own (its runs would be counted twice)")
            arms = self.check_entries(where, p, valid)
            if "measure" in p and not any(self.c["arms"].get(a, {}).get("capture") for a in arms):
                self.bad(f"{where}.measure: needs an arm with capture (arms.NAME.capture.steps) among its runs")
            self.check_selected_values(where, p, valid)
            self.check_gates(where, pname, p, arms)

    def check_selections(self, where: str, pname: str, p: dict, names: list) -> dict[str, dict]:
        """Each declared selection: its phase, gate and arms exist, names are unique. Returns the valid ones by
        reference (study/selections.py)."""
        decls = sels.declared(p)
        seen: dict[str, int] = {}
        bad_refs = set()
        for i, sel in enumerate(decls):
            key = f"{where}.{sels.key_of(p, i)}"
            if sel["name"] is not None:
                if sel["name"] in seen:
                    self.bad(f"{key}.name: {sel['name']!r} is declared twice in {where}.select "
                             f"(select[{seen[sel['name']]}] too); each selection needs its own name")
                seen.setdefault(sel["name"], i)
            src = sel["from"]
            if src not in names or names.index(src) >= names.index(pname):
                self.bad(f"{key}.from: {src!r} is not a phase before {pname} "
                         f"(earlier phases: {', '.join(names[:names.index(pname)]) or 'none'})")
                bad_refs.add(sels.ref_of(sel["name"]))
                continue
            if "gate" in sel and sel["gate"] not in self.c["phases"][src]["gates"]:
                self.bad(f"{key}.gate: {sel['gate']!r} is not a gate of {src} "
                         f"(its gates: {', '.join(self.c['phases'][src]['gates']) or 'none'})")
            src_arms = {e["arm"] for e in run_entries(self.c["phases"][src])}
            for arm in sel.get("arms", []):
                if arm not in src_arms:
                    self.bad(f"{key}.arms: {arm!r} is not an arm of {src} "
                             f"(its arms: {', '.join(sorted(src_arms))})")
        return {r: d for r, d in sels.refs(p).items() if sels.ref_of(d["name"]) not in bad_refs}

    def allowed_refs(self, p: dict) -> str:
        allowed = sorted(sels.refs(p))
        return ", ".join(allowed) if allowed else "none: the phase has no select"

    def check_ref(self, key: str, where: str, p: dict, ref: str, what: str) -> bool:
        """A reference in a run entry (arm/value) or scratch: one of the phase's own selections."""
        if ref in sels.refs(p):
            return True
        if "select" not in p:
            self.bad(f"{key}: {ref!r} needs {where}.select (the phase it selects from)")
        elif ref == SELECTED:
            self.bad(f"{key}: 'selected' is ambiguous: this phase declares {len(sels.declared(p))} selections; "
                     f"name one ({what}; allowed: {self.allowed_refs(p)})")
        else:
            self.bad(f"{key}: {ref!r} names no selection of this phase ({what}; allowed: {self.allowed_refs(p)})")
        return False

    def check_selected_values(self, where: str, p: dict, valid: dict[str, dict]) -> None:
        """An arm that takes the selected value must have the setting the earlier phase swept."""
        for i, entry in enumerate(run_entries(p)):
            ref = entry.get("value")
            if not sels.is_ref(ref) or ref not in valid or entry["arm"] not in self.c["arms"]:
                continue
            sel = valid[ref]
            src = self.c["phases"][sel["from"]]
            candidates = set(sel.get("arms") or [])
            params = {e["sweep"]["param"] for e in src["runs"] if "sweep" in e
                      and (not candidates or e["arm"] in candidates)}
            for param in sorted(params):
                why = self.settable(entry["arm"], param)
                if why:
                    key = f"{where}.runs[{i - 1}]" if i else f"{where}.baseline"
                    named = f" ({ref})" if ref != SELECTED else ""
                    self.bad(f"{key}.value: the value selected from {sel['from']}{named} sets {param}, which is "
                             f"{why}")

    def check_entries(self, where: str, p: dict, valid: dict[str, dict]) -> set[str]:
        arms, seen = set(), set()
        for i, entry in enumerate(run_entries(p)):
            key = f"{where}.runs[{i - 1}]" if i else f"{where}.baseline"
            arm = entry["arm"]
            if entry.get("value") is not None:
                value = entry["value"]
                if not sels.is_ref(value):
                    self.bad(f"{key}.value: {value!r} is not allowed ('selected', or 'selected:NAME' with NAME one "
                             f"of the phase's selections: {self.allowed_refs(p)})")
                elif sels.is_ref(arm) and value != arm:
                    self.bad(f"{key}.value: {value!r} beside arm {arm!r}: a selected arm runs at its own selection's "
                             "value; leave value out")
                else:
                    self.check_ref(f"{key}.value", where, p, value, "the selection whose value this arm takes")
            if sels.is_ref(arm):
                ok = self.check_ref(f"{key}.arm", where, p, arm, "the selection whose arm and value this entry runs")
                if i == 0:
                    self.bad(f"{key}: the baseline cannot be the selected arm")
                arms.add(arm)
                if "sweep" in entry and ok and arm in valid:  # every arm that can be selected must take the sweep
                    sel = valid[arm]
                    src = self.c["phases"][sel["from"]]
                    for cand in sorted(set(sel.get("arms") or [e["arm"] for e in src["runs"]])
                                       - {a for a in (e["arm"] for e in src["runs"]) if sels.is_ref(a)}):
                        if cand in self.c["arms"]:
                            why = self.settable(cand, entry["sweep"]["param"])
                            if why:
                                self.bad(f"{key}.sweep.param: {entry['sweep']['param']!r} is {why} (arm {cand} can be "
                                         f"selected)")
                continue
            if arm not in self.c["arms"]:
                self.bad(f"{key}.arm: {arm!r} is not in arms (known: {', '.join(sorted(self.c['arms']))})")
                continue
            arms.add(arm)
            sweep = entry.get("sweep")
            values = [None]
            if sweep:
                why = self.settable(arm, sweep["param"])
                if why:
                    self.bad(f"{key}.sweep.param: {sweep['param']!r} is {why}")
                    continue
                kind = self.value_kind(arm, sweep["param"])
                for j, v in enumerate(sweep["values"]):
                    what = self.kind_problem(kind, v) or (None if not isinstance(v, str) or PATH_SAFE.match(v)
                                                     else "letters, digits, '_', '.' and '-' (it goes into paths)")
                    if what:
                        self.bad(f"{key}.sweep.values[{j}]: {v!r} is not allowed for {sweep['param']} ({what})")
                dup = sorted({repr(v) for v in sweep["values"] if sweep["values"].count(v) > 1})
                if dup:
                    self.bad(f"{key}.sweep.values: {', '.join(dup)} listed twice")
                values = sweep["values"]
            declared = self.args.OPTIMIZERS.get(self.c["arms"][arm]["class"])
            if declared is not None and "noise" in declared.traits:
                alpha = {**self.c["optimizer_defaults"]["muon"], **self.c["arms"][arm].get("muon", {})}.get("alpha")
                alphas = values if sweep and sweep["param"] == "muon.alpha" else [alpha]
                if not sels.is_ref(entry.get("value")) and any(a is None or a == 0 for a in alphas):
                    self.bad(f"{key}: a noise arm ({arm}) needs alpha > 0 (sweep muon.alpha or set it on the arm)")
            pair = (arm, repr(sweep), entry.get("value"))
            if pair in seen:
                self.bad(f"{key}: arm {arm} with the same values is listed twice")
            seen.add(pair)
        return arms

    def gate_refs(self, pname: str, p: dict) -> tuple[dict[str, list], str]:
        """{reference: candidate arms} a gate of this phase may name, and what to say is allowed: the phase's
        own selections, else the picks of the later selections from it (study/selections.py)."""
        if "select" in p:
            return ({r: list(d.get("arms") or selectable_arms(self.c, pname, r)) for r, d in sels.refs(p).items()},
                    self.allowed_refs(p))
        later = later_selections(self.c, pname)
        out = {r: sorted({a for _, d in ds for a in (d.get("arms") or [])}) for r, ds in later.items()}
        return out, (", ".join(sorted(later)) if later else "none: no later phase selects from this one")

    def check_gates(self, where: str, pname: str, p: dict, arms: set[str]) -> None:
        refs, allowed = self.gate_refs(pname, p)
        later = later_selections(self.c, pname) if "select" not in p else {}
        for gname, g in p["gates"].items():
            gwhere = f"{where}.gates.{gname}"
            resolved, problems = self.gate_kinds.resolve(gwhere, g)
            for msg in problems:
                self.bad(msg)
            if not resolved:
                continue
            for key, arm in self.gate_kinds.arm_references(resolved):
                if sels.is_ref(arm):
                    # the pick of this phase's selection, or (a phase that selects nothing) of a later phase's
                    # selection from it; never the rule over every arm, which could pick a control (issue 19)
                    if arm not in refs:
                        if "select" in p:
                            why = (f"is ambiguous: this phase declares {len(sels.declared(p))} selections"
                                   if arm == SELECTED else "names no selection of this phase")
                        elif not later:
                            why = ("means the pick of a later phase's select: from this phase, and no phase "
                                   "selects from it (name the arms to judge, or select from this phase later)")
                        else:
                            why = "names no later selection from this phase"
                        self.bad(f"{gwhere}.{key}: {arm!r} {why} (allowed: {allowed})")
                    elif arm in later and pick_of(later[arm]) is None:
                        self.bad(f"{gwhere}.{key}: {arm!r} is ambiguous: the later selections from this phase ("
                                 + ", ".join(f"{q}.select" + (f" {d['name']}" if d["name"] else "")
                                             for q, d in later[arm])
                                 + ") take different arms or rules; name one (selected:NAME)")
                elif arm not in arms:
                    self.bad(f"{gwhere}.{key}: {arm!r} is not an arm of {where} (its arms: "
                             f"{', '.join(sorted(arms))})")
            for key, step in self.gate_kinds.step_references(resolved):
                model = p["model"]
                if model in self.c["models"] and not self.is_evaluated(model, step):
                    self.bad(f"{gwhere}.{key}: step {step} is not evaluated by {model} (its "
                             f"{self.c['models'][model]['steps']} steps; evaluated: "
                             f"{self.evaluated_steps_text(model)})")
            model = resolved.get("model")
            if model is not None and model not in (p["model"], p.get("scratch", {}).get("model")):
                self.bad(f"{gwhere}.model: {model!r} is not a model of {where}")
            self.check_gate_metric(gwhere, p, resolved, refs)
            if resolved["kind"] == "reaches_target_sooner" and "scratch" not in p:
                self.bad(f"{gwhere}: kind reaches_target_sooner needs a scratch pair ({where}.scratch)")

    # metrics an optimizer class never logs (a gate on them cannot work: it would show up only at the end)
    NOT_LOGGED = {"eff_rank_mean": ("AdamW",), "eff_rank_min": ("AdamW",)}

    def check_gate_metric(self, gwhere: str, p: dict, resolved: dict, refs: dict | None = None) -> None:
        """Refuse a gate on a metric that an arm it judges (its arms, 'selected''s candidates, and the
        baseline for metric_higher; every arm of the phase for metric_logged) never logs."""
        metric = resolved.get("metric")
        classes = self.NOT_LOGGED.get(metric) if isinstance(metric, str) else None
        if not classes:
            return
        base = p.get("baseline")
        base = base if isinstance(base, str) else (base or {}).get("arm")
        if resolved["kind"] == "metric_logged":
            judged = {e.get("arm") for e in p.get("runs", [])} | {base}
        elif resolved["kind"] == "metric_higher":
            judged = set(resolved.get("arms") or []) | {base}
        else:
            return
        for ref in [a for a in judged if sels.is_ref(a)]:
            judged.discard(ref)
            judged |= set((refs or {}).get(ref) or [])
        for arm in sorted(a for a in judged if isinstance(a, str)):
            cls = (self.c.get("arms", {}).get(arm) or {}).get("class")
            if cls in classes:
                self.bad(f"{gwhere}.metric: {metric!r} is never logged by arm {arm} (class {cls}), which the gate "
                         f"judges; use a metric every judged arm logs")


def check(config: dict, root: Path) -> dict:
    """PlanError listing every problem of the study, or what the checks learned ({"tokenizer_vocab"}). A valid
    study gets the schema's defaults filled in, in place (study.load.apply_defaults)."""
    problems = non_finite_numbers(config)
    if not problems:
        problems = schema_problems(config, root)
    if not problems:
        apply_defaults(config, read_schema(root))  # the schema's defaults, in the study itself (config/schema.yaml)
        c = _Checks(config, root)
        c.check_arms()
        c.check_models()
        c.check_data()
        c.check_phases()
        problems = c.problems + external.problems(config, root)
        if not problems:
            try:
                variant_table(config)
            except PlanError as e:
                problems = [str(e)]
    if problems:
        raise PlanError("invalid study:\n  - " + "\n  - ".join(problems))
    return {"tokenizer_vocab": c.tokenizer_vocab}
