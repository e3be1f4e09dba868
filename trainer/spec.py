"""The run specification (docs/DESIGN.md, "The run spec"): parsing, validation, defaults.

`RunSpec.from_dict(d)` checks every field and raises one `SpecError` that lists every bad field,
each with its key (dotted path), its value and what is allowed. Unknown keys are errors, so a typo
never falls back to a default silently. Optional keys get the defaults below; `RunSpec.to_dict()`
returns the resolved spec with every default written out, and that is what the trainer records
(`spec.json`, `metrics.json["spec"]`), so no default is hidden.

No torch import here: the spec can be validated anywhere.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _declarations(relpath: str):
    """A declaration file of this code root (optim/registry.py, trainer/models/families.py), loaded from its
    path: importing optim/ imports torch, and the workflow loads this file from its path too, so the
    declarations read are always the same code root's."""
    path = Path(__file__).resolve().parent.parent / relpath
    name = f"_declarations_{abs(hash(str(path)))}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_REGISTRY = _declarations("optim/registry.py")
_MODELS = _declarations("trainer/models/families.py")

MODEL_PRESETS = tuple(_MODELS.PRESETS)  # trainer/models/families.py
OPTIMIZER_CLASSES = tuple(_REGISTRY.OPTIMIZERS)  # optim/registry.py
DATA_KINDS = ("stdlib", "bin")
WANDB_MODES = ("disabled", "offline", "online")
DEVICES = ("auto", "cpu", "cuda")
COMPILE = ("auto", True, False)
DTYPES = ("auto", "float32", "bfloat16")
CAPTURE_WHAT = ("grad", "momentum")
MAX_VOCAB = 262144  # uint32 shards above 65536 ids (Granite's tokenizer has 100352)
DEFAULT_ADAMW_PATTERNS = list(_REGISTRY.DEFAULT_ADAMW_PATTERNS)  # the factory's too
# The longest sequence of each preset (trainer/models/families.py; a test keeps them the models' block_size).
PRESET_BLOCK_SIZE = {name: fam.presets[name] for name, fam in _MODELS.PRESETS.items()}
# Size bounds, so that a typo cannot ask for terabytes: the history keeps a row per step in memory; a step's
# batch (global_batch x seq_len tokens) and the validation windows' indices (eval.batches x global_batch,
# 8 bytes each) are allocated at once.
MAX_STEPS = 10_000_000
MAX_GLOBAL_BATCH = 1 << 20
MAX_TOKENS_PER_STEP = 1 << 32
MAX_VAL_WINDOWS = 1 << 20
# Classes that exchange their own compressed gradients: no rank holds the global gradient to clip.
SELF_SYNCED_CLASSES = _REGISTRY.with_trait("self_synced")
# Sections that cannot change a run's numbers (the same list as study.spec.OPERATIONAL).
OPERATIONAL = ("checkpoint", "wandb", "runtime", "fingerprint")


class SpecError(ValueError):
    """One or more bad spec fields. `errors` holds (key, value, allowed) triples; `key`, `value` and
    `allowed` are the first one's."""

    def __init__(self, errors: list[tuple[str, Any, str]]):
        self.errors = list(errors)
        self.key, self.value, self.allowed = self.errors[0]
        lines = [f"  {k} = {_show(v)}: {a}" for k, v, a in self.errors]
        noun = "field" if len(self.errors) == 1 else "fields"
        super().__init__(f"invalid run spec ({len(self.errors)} bad {noun}):\n" + "\n".join(lines))


_MISSING = object()


def _show(v: Any) -> str:
    if v is _MISSING:
        return "<missing>"
    s = json.dumps(v, default=str) if not isinstance(v, str) else repr(v)
    return s if len(s) <= 200 else s[:197] + "..."


class _Checker:
    """Collects errors while reading a nested dict."""

    def __init__(self):
        self.errors: list[tuple[str, Any, str]] = []

    def bad(self, key: str, value: Any, allowed: str):
        self.errors.append((key, value, allowed))

    def section(self, d: dict, name: str, allowed_keys: set[str], required: bool = True) -> dict:
        v = d.get(name, _MISSING)
        if v is _MISSING:
            if required:
                self.bad(name, v, "a required section (an object)")
            return {}
        if not isinstance(v, dict):
            self.bad(name, v, "an object")
            return {}
        for k in v:
            if k not in allowed_keys:
                self.bad(f"{name}.{k}", v[k], f"an unknown key; allowed keys: {sorted(allowed_keys)}")
        return v

    def get(self, d: dict, path: str, kind: str, default: Any = _MISSING, *, choices=None,
            lo=None, hi=None, lo_open=False, hi_open=False):
        """Read d[last part of path] and check it. kind: int, float, bool, str, list[str],
        list[int], list[float], dict, choice."""
        key = path.rsplit(".", 1)[-1]
        v = d.get(key, _MISSING)
        if v is _MISSING:
            if default is _MISSING:
                self.bad(path, v, f"required ({_describe(kind, choices, lo, hi, lo_open, hi_open)})")
                return None
            return copy.deepcopy(default)
        if v is None and default is None:  # an optional field written as null
            return None
        ok, v2 = _coerce(v, kind, choices)
        if not ok:
            self.bad(path, v, _describe(kind, choices, lo, hi, lo_open, hi_open))
            return None if default is _MISSING else copy.deepcopy(default)
        for x in (v2 if kind.startswith("list[") and kind != "list[str]" else [v2]):
            if kind in ("int", "float", "list[int]", "list[float]"):
                if (lo is not None and (x < lo or (lo_open and x == lo))) or \
                        (hi is not None and (x > hi or (hi_open and x == hi))):
                    self.bad(path, v, _describe(kind, choices, lo, hi, lo_open, hi_open))
                    return None if default is _MISSING else copy.deepcopy(default)
        return v2


def _describe(kind, choices, lo, hi, lo_open, hi_open) -> str:
    if kind == "choice":
        return f"one of {list(choices)}"
    names = {"int": "an integer", "float": "a finite number", "bool": "true or false",
             "str": "a non-empty string", "list[str]": "a list of strings",
             "list[int]": "a list of integers", "list[float]": "a list of finite numbers",
             "dict": "an object"}
    s = names[kind]
    if lo is not None or hi is not None:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            parts.append(f"{'<' if hi_open else '<='} {hi}")
        s += (" (each " if kind.startswith("list") else " ") + " and ".join(parts) + \
             (")" if kind.startswith("list") else "")
    return s


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _coerce(v, kind, choices):
    if kind == "int":
        if _is_int(v):
            return True, v
        if isinstance(v, float) and v.is_integer():
            return True, int(v)
        return False, None
    if kind == "float":
        return (True, float(v)) if _is_num(v) else (False, None)
    if kind == "bool":
        return (True, v) if isinstance(v, bool) else (False, None)
    if kind == "str":
        return (True, v) if isinstance(v, str) and v else (False, None)
    if kind == "dict":
        return (True, v) if isinstance(v, dict) else (False, None)
    if kind == "list[str]":
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)
        return (True, list(v)) if ok else (False, None)
    if kind == "list[int]":
        ok = isinstance(v, (list, tuple)) and all(_is_int(x) for x in v)
        return (True, list(v)) if ok else (False, None)
    if kind == "list[float]":
        ok = isinstance(v, (list, tuple)) and all(_is_num(x) for x in v)
        return (True, [float(x) for x in v]) if ok else (False, None)
    if kind == "choice":
        for c in choices:  # True == 1 in Python: compare types too
            if v == c and type(v) is type(c):
                return True, v
        if isinstance(v, str) and v.lower() in ("true", "false") and True in choices:
            return True, v.lower() == "true"
        return False, None
    raise AssertionError(kind)


@dataclass
class ModelSpec:
    name: str
    arch: str
    vocab_size: int | None = None  # presets only: override the preset's vocabulary size
    tie_embeddings: bool = False  # presets only: share the input embedding with the output head
    options: dict = field(default_factory=dict)  # the family's model.options, resolved (nGPT: residual, gate_alpha)
    revision: str | None = None  # hf:<Hub id> only: the commit fetched (trainer/hub.py), loaded from the cache

    @property
    def family(self):
        return _MODELS.family_of(self.arch)

    @property
    def is_ngpt(self) -> bool:  # a family whose weights live on the sphere
        return self.family is not None and "sphere" in self.family.traits

    @property
    def is_hf(self) -> bool:  # a family whose config comes with its weights
        return self.family is not None and "own_config" in self.family.traits

    @property
    def hf_path(self) -> str:
        return self.arch[3:]


@dataclass
class OptimizerSpec:
    arm: str
    cls: str
    muon: dict
    adamw: dict
    adamw_patterns: list[str]


@dataclass
class TrainingSpec:
    steps: int
    global_batch: int
    micro_batch: int
    seq_len: int
    warmup_steps: int = 0
    cooldown_frac: float = 0.0
    grad_clip: float = 0.0
    divergence_factor: float = 3.0
    projection_every: int = 1  # nGPT: put the weights back on the sphere after every k-th optimizer step


@dataclass
class EvalSpec:
    every: int
    batches: int
    at_steps: list[int] = field(default_factory=list)
    target_losses: list[float] = field(default_factory=list)


@dataclass
class DataSpec:
    kind: str
    path: str | None = None  # stdlib: the corpus directory
    train: str | None = None  # bin: glob of training shards
    val: str | None = None  # bin: glob of validation shards
    checksum: str | None = None  # bin: the shards' content checksum (a prepared corpus's manifest); checked at start


@dataclass
class CheckpointSpec:
    every: int = 0  # 0: only on a preemption signal
    keep: bool = False


@dataclass
class WandbSpec:
    mode: str = "offline"
    project: str = "muon-ablations"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    dir: str = "results/wandb"
    mode_given: bool = True  # False when the spec left mode out (then no wandb -> disabled)


@dataclass
class RuntimeSpec:
    device: str = "auto"
    compile: Any = "auto"  # "auto" | True | False
    dtype: str = "auto"
    # trainer/determinism.py; operational (outside the fingerprint). On by default: it cost 8.4% of tokens/s
    # on an H200 (GPT-124M, compiled; benchmarks/results/deterministic_h200.json), within the 15% target
    deterministic: bool = True


@dataclass
class CaptureSpec:
    steps: list[int] = field(default_factory=list)  # updates (1-based) whose tensors are written (trainer/capture.py)
    what: list[str] = field(default_factory=lambda: list(CAPTURE_WHAT))


@dataclass
class RunSpec:
    run_id: str
    model: ModelSpec
    optimizer: OptimizerSpec
    alpha: float
    seed: int
    training: TrainingSpec
    eval: EvalSpec
    data: DataSpec
    checkpoint: CheckpointSpec
    wandb: WandbSpec
    runtime: RuntimeSpec
    fingerprint: str
    capture: CaptureSpec = field(default_factory=CaptureSpec)

    # ------------------------------------------------------------------ parsing
    @classmethod
    def from_dict(cls, d: Any) -> "RunSpec":
        c = _Checker()
        if not isinstance(d, dict):
            raise SpecError([("<spec>", d, "a JSON object")])
        top = {"run_id", "model", "optimizer", "alpha", "seed", "training", "eval", "data",
               "checkpoint", "wandb", "runtime", "fingerprint", "capture"}
        for k in d:
            if k not in top:
                c.bad(k, d[k], f"an unknown key; allowed keys: {sorted(top)}")
        run_id = c.get(d, "run_id", "str")
        if run_id is not None and (not run_id.isprintable() or run_id != run_id.strip()):
            c.bad("run_id", run_id, "printable characters without spaces at either end (it names directories)")
        seed = c.get(d, "seed", "int", lo=0, hi=2**63 - 1)

        m = c.section(d, "model", {"name", "arch", "vocab_size", "tie_embeddings", "options", "revision"})
        arch = c.get(m, "model.arch", "str") if m else None
        if arch is not None and _MODELS.family_of(arch) is None:
            c.bad("model.arch", arch, f"one of {list(MODEL_PRESETS)}, 'hf:<local path>' or 'hf:<Hub id>'")
        model = ModelSpec(
            name=(c.get(m, "model.name", "str") if m else None) or "",
            arch=arch or "",
            vocab_size=c.get(m, "model.vocab_size", "int", None, lo=1, hi=MAX_VOCAB) if m else None,
            tie_embeddings=c.get(m, "model.tie_embeddings", "bool", False) if m else False,
            revision=c.get(m, "model.revision", "str", None) if m else None,
        )
        if model.revision is not None and not (model.is_hf and re.fullmatch(r"[0-9a-f]{40}", model.revision)):
            c.bad("model.revision", model.revision, "a 40-hex commit, for hf:<Hub id> models only")
        model.options = _model_options(c, m, model) if m else {}
        if model.is_hf and (m.get("vocab_size") is not None or m.get("tie_embeddings")):
            c.bad("model.vocab_size/tie_embeddings", {k: m.get(k) for k in ("vocab_size", "tie_embeddings")},
                  "not settable for hf: models (their config on disk decides)")

        o = c.section(d, "optimizer", {"arm", "class", "muon", "adamw", "split"})
        ocls = c.get(o, "optimizer.class", "choice", choices=OPTIMIZER_CLASSES) if o else None
        muon = c.get(o, "optimizer.muon", "dict", {}) if o else {}
        adamw = c.get(o, "optimizer.adamw", "dict", {}) if o else {}
        split = c.get(o, "optimizer.split", "dict", {}) if o else {}
        for k in split:
            if k != "adamw_patterns":
                c.bad(f"optimizer.split.{k}", split[k], "an unknown key; allowed keys: ['adamw_patterns']")
        patterns = c.get(split, "optimizer.split.adamw_patterns", "list[str]", DEFAULT_ADAMW_PATTERNS)
        for sub, dd in (("muon", muon), ("adamw", adamw)):
            for k, v in (dd or {}).items():
                if not isinstance(k, str) or not k.isidentifier():
                    c.bad(f"optimizer.{sub}.{k}", v, "keyword-argument names")
            lr = (dd or {}).get("lr")
            if lr is not None and not (_is_num(lr) and lr >= 0):
                c.bad(f"optimizer.{sub}.lr", lr, "a finite number >= 0")
        optimizer = OptimizerSpec(arm=(c.get(o, "optimizer.arm", "str", ocls or "") if o else ""),
                                  cls=ocls or "", muon=muon or {}, adamw=adamw or {},
                                  adamw_patterns=patterns or [])
        if ocls and _REGISTRY.OPTIMIZERS[ocls].takes == "none" and muon:
            c.bad("optimizer.muon", muon, f"empty for class {ocls} (every parameter goes to AdamW; its settings "
                                          "are optimizer.adamw)")

        alpha_default = muon.get("alpha", 0.0) if isinstance(muon, dict) else 0.0
        alpha = c.get(d, "alpha", "float", alpha_default if _is_num(alpha_default) else 0.0, lo=0)
        if isinstance(muon, dict) and "alpha" in muon and alpha is not None:
            ma = muon["alpha"]
            if not (_is_num(ma) and ma >= 0):
                c.bad("optimizer.muon.alpha", ma, "a finite number >= 0")
            elif not math.isclose(float(ma), alpha, rel_tol=1e-12, abs_tol=0.0):
                c.bad("alpha", alpha, f"equal to optimizer.muon.alpha ({ma}): the run's identity must match "
                                      "what the optimizer uses")

        t = c.section(d, "training", {"steps", "global_batch", "micro_batch", "seq_len", "warmup_steps",
                                      "cooldown_frac", "grad_clip", "divergence_factor", "projection_every"})
        training = TrainingSpec(
            steps=c.get(t, "training.steps", "int", lo=1, hi=MAX_STEPS) if t else None,
            global_batch=c.get(t, "training.global_batch", "int", lo=1, hi=MAX_GLOBAL_BATCH) if t else None,
            micro_batch=c.get(t, "training.micro_batch", "int", lo=1, hi=MAX_GLOBAL_BATCH) if t else None,
            seq_len=c.get(t, "training.seq_len", "int", lo=2, hi=1 << 20) if t else None,
            warmup_steps=c.get(t, "training.warmup_steps", "int", 0, lo=0) if t else 0,
            cooldown_frac=c.get(t, "training.cooldown_frac", "float", 0.0, lo=0.0, hi=1.0) if t else 0.0,
            grad_clip=c.get(t, "training.grad_clip", "float", 0.0, lo=0.0) if t else 0.0,
            divergence_factor=c.get(t, "training.divergence_factor", "float", 3.0, lo=1.0, lo_open=True)
            if t else 3.0,
            projection_every=c.get(t, "training.projection_every", "int", 1, lo=1) if t else 1,
        )
        if training.projection_every not in (None, 1) and not model.is_ngpt:
            c.bad("training.projection_every", training.projection_every,
                  f"1 for model.arch {model.arch!r} (only the {_MODELS.titles('sphere')} keep weights on the sphere)")
        gb, mb = training.global_batch, training.micro_batch
        if gb is not None and mb is not None and gb % mb != 0:
            c.bad("training.micro_batch", mb, f"a divisor of training.global_batch ({gb})")
        sl = training.seq_len
        if sl is not None and model.arch in PRESET_BLOCK_SIZE and sl > PRESET_BLOCK_SIZE[model.arch]:
            c.bad("training.seq_len", sl, f"at most {PRESET_BLOCK_SIZE[model.arch]} (the block size of model.arch "
                                          f"{model.arch!r})")
        elif sl is not None and gb is not None and gb * sl > MAX_TOKENS_PER_STEP:
            c.bad("training.global_batch", gb, f"at most {MAX_TOKENS_PER_STEP} tokens per step with training.seq_len "
                                               f"{sl} (global_batch <= {MAX_TOKENS_PER_STEP // sl})")
        if ocls in SELF_SYNCED_CLASSES and training.grad_clip:
            c.bad("training.grad_clip", training.grad_clip, f"0 with optimizer.class {ocls!r}: it exchanges compressed "
                                                            "gradients, so no rank ever holds the global gradient to clip")

        e = c.section(d, "eval", {"every", "batches", "at_steps", "target_losses"})
        ev = EvalSpec(
            every=c.get(e, "eval.every", "int", lo=0) if e else None,
            batches=c.get(e, "eval.batches", "int", lo=1, hi=MAX_VAL_WINDOWS) if e else None,
            at_steps=c.get(e, "eval.at_steps", "list[int]", [], lo=1) if e else [],
            target_losses=c.get(e, "eval.target_losses", "list[float]", [], lo=0.0, lo_open=True) if e else [],
        )
        if ev.batches is not None and gb is not None and ev.batches * gb > MAX_VAL_WINDOWS:
            c.bad("eval.batches", ev.batches, f"at most {MAX_VAL_WINDOWS} validation windows (eval.batches x "
                                              f"training.global_batch {gb}: eval.batches <= {max(1, MAX_VAL_WINDOWS // gb)})")
        if ev.at_steps and training.steps is not None:
            over = [s for s in ev.at_steps if s > training.steps]
            if over:
                c.bad("eval.at_steps", ev.at_steps, f"steps between 1 and training.steps ({training.steps}); "
                                                    f"{over} are beyond the run")
        if ev.at_steps:
            ev.at_steps = sorted(set(ev.at_steps))

        da = c.section(d, "data", {"kind", "path", "train", "val", "checksum"})
        kind = c.get(da, "data.kind", "choice", choices=DATA_KINDS) if da else None
        data = DataSpec(kind=kind or "")
        if kind == "stdlib":
            data.path = c.get(da, "data.path", "str")
            for k in ("train", "val"):
                if k in da:
                    c.bad(f"data.{k}", da[k], "only for data.kind 'bin'")
        elif kind == "bin":
            data.train = c.get(da, "data.train", "str")
            data.val = c.get(da, "data.val", "str")
            if "path" in da:
                c.bad("data.path", da["path"], "only for data.kind 'stdlib' (bin uses data.train and data.val)")
            data.checksum = c.get(da, "data.checksum", "str", None)
            if data.checksum is not None and not (len(data.checksum) == 64 and
                                                  all(ch in "0123456789abcdef" for ch in data.checksum)):
                c.bad("data.checksum", data.checksum, "64 lowercase hex digits (the manifest's content_checksum)")
        if kind == "stdlib" and "checksum" in da:
            c.bad("data.checksum", da["checksum"], "only for data.kind 'bin' (the stdlib corpus checks its own)")

        ck = c.section(d, "checkpoint", {"every", "keep"}, required=False)
        checkpoint = CheckpointSpec(every=c.get(ck, "checkpoint.every", "int", 0, lo=0),
                                    keep=c.get(ck, "checkpoint.keep", "bool", False))

        w = c.section(d, "wandb", {"mode", "project", "entity", "group", "tags", "dir"}, required=False)
        wandb = WandbSpec(
            mode=c.get(w, "wandb.mode", "choice", "offline", choices=WANDB_MODES),
            project=c.get(w, "wandb.project", "str", "muon-ablations"),
            entity=c.get(w, "wandb.entity", "str", None),
            group=c.get(w, "wandb.group", "str", None),
            tags=c.get(w, "wandb.tags", "list[str]", []),
            dir=c.get(w, "wandb.dir", "str", "results/wandb"),
            mode_given="mode" in w,
        )
        for tag in wandb.tags or []:
            if len(tag) > 64:
                c.bad("wandb.tags", tag, "tags of at most 64 characters (a wandb limit)")

        r = c.section(d, "runtime", {"device", "compile", "dtype", "deterministic"}, required=False)
        runtime = RuntimeSpec(device=c.get(r, "runtime.device", "choice", "auto", choices=DEVICES),
                              compile=c.get(r, "runtime.compile", "choice", "auto", choices=COMPILE),
                              dtype=c.get(r, "runtime.dtype", "choice", "auto", choices=DTYPES),
                              deterministic=c.get(r, "runtime.deterministic", "bool", True))

        cap = c.section(d, "capture", {"steps", "what"}, required=False)
        capture = CaptureSpec(steps=sorted(set(c.get(cap, "capture.steps", "list[int]", [], lo=1) or [])),
                              what=c.get(cap, "capture.what", "list[str]", list(CAPTURE_WHAT)) or [])
        if training.steps is not None and any(s > training.steps for s in capture.steps):
            c.bad("capture.steps", cap.get("steps"), f"steps between 1 and training.steps ({training.steps})")
        for w_ in capture.what:
            if w_ not in CAPTURE_WHAT:
                c.bad("capture.what", cap.get("what"), f"a list of {list(CAPTURE_WHAT)}")
                break

        fp = c.get(d, "fingerprint", "str", None)
        if c.errors:
            raise SpecError(c.errors)
        spec = cls(run_id=run_id, model=model, optimizer=optimizer, alpha=alpha, seed=seed, training=training,
                   eval=ev, data=data, checkpoint=checkpoint, wandb=wandb, runtime=runtime, fingerprint="",
                   capture=capture)
        spec.fingerprint = fp if fp is not None else spec.local_fingerprint()
        return spec

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict:
        """The resolved spec: the input with every default written out (JSON-ready)."""
        m = {"name": self.model.name, "arch": self.model.arch}
        if self.model.revision is not None:
            m["revision"] = self.model.revision
        if not self.model.is_hf:
            m["vocab_size"] = self.model.vocab_size
            m["tie_embeddings"] = self.model.tie_embeddings
        if self.model.family is not None and self.model.family.options:
            m["options"] = copy.deepcopy(self.model.options)
        data = {"kind": self.data.kind}
        if self.data.kind == "stdlib":
            data["path"] = self.data.path
        else:
            data.update(train=self.data.train, val=self.data.val)
            if self.data.checksum is not None:  # only when given: specs without it keep their fingerprints
                data["checksum"] = self.data.checksum
        w = {"mode": self.wandb.mode, "project": self.wandb.project, "group": self.wandb.group,
             "tags": list(self.wandb.tags), "dir": self.wandb.dir}
        if self.wandb.entity is not None:
            w["entity"] = self.wandb.entity
        out = {
            "run_id": self.run_id,
            "model": m,
            "optimizer": {"arm": self.optimizer.arm, "class": self.optimizer.cls,
                          "muon": copy.deepcopy(self.optimizer.muon), "adamw": copy.deepcopy(self.optimizer.adamw),
                          "split": {"adamw_patterns": list(self.optimizer.adamw_patterns)}},
            "alpha": self.alpha,
            "seed": self.seed,
            "training": dict(vars(self.training)),
            "eval": {"every": self.eval.every, "batches": self.eval.batches, "at_steps": list(self.eval.at_steps),
                     "target_losses": list(self.eval.target_losses)},
            "data": data,
            "checkpoint": dict(vars(self.checkpoint)),
            "wandb": w,
            "runtime": dict(vars(self.runtime)),
            "fingerprint": self.fingerprint,
        }
        if self.capture.steps:  # written only when set, so that specs without it keep their fingerprints
            out["capture"] = {"steps": list(self.capture.steps), "what": list(self.capture.what)}
        return out

    def local_fingerprint(self) -> str:
        """16 hex digits over the result-affecting part of the resolved spec (used when the spec came
        without a study fingerprint)."""
        d = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]

    def resume_key(self, code_versions: dict) -> str:
        """What a checkpoint must match to be resumed: the result-affecting spec (the study's fingerprint
        included) and the code's behaviour versions."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("checkpoint", "wandb", "runtime")}
        d["code_versions"] = code_versions
        return hashlib.sha256(canonical_json(d).encode()).hexdigest()[:16]


def _model_options(c: _Checker, m: dict, model: ModelSpec) -> dict:
    """model.options, resolved by the family's declarations (trainer/models/families.py): every option the
    family takes with its default written out, e.g. nGPT's {"residual": "reference"} or {"residual": "gated",
    "gate_alpha": 0.15 unless given}; a family without options takes none."""
    o = c.get(m, "model.options", "dict", {})
    declared = model.family.options if model.family is not None else {}
    if not declared:
        if o:
            c.bad("model.options", o, f"only for the {_MODELS.titles(takes_options=True)}")
        return {}
    for k in o:
        if k not in declared:
            c.bad(f"model.options.{k}", o[k], f"an unknown key; allowed keys: {sorted(declared)}")
    out = {}
    for key, opt in declared.items():
        if opt.only_with and out.get(opt.only_with[0]) != opt.only_with[1]:
            if key in o:
                c.bad(f"model.options.{key}", o[key], f"only with model.options.{opt.only_with[0]} {opt.only_with[1]!r}")
            continue
        out[key] = c.get(o, f"model.options.{key}", opt.kind, opt.default, choices=opt.choices or None, lo=opt.lo,
                         lo_open=opt.lo_open)
    return out


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=VALUE` overrides: VALUE is parsed as JSON when it parses, else kept a string."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise SpecError([(item, item, "overrides written KEY=VALUE, e.g. training.steps=20")])
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        parts = key.strip().split(".")
        cur = d
        for p in parts[:-1]:
            nxt = cur.get(p)
            if nxt is None:
                nxt = cur[p] = {}
            if not isinstance(nxt, dict):
                raise SpecError([(key, raw, f"a path through objects; '{p}' is not an object")])
            cur = nxt
        cur[parts[-1]] = val
    return d


def load_spec_file(path: str) -> dict:
    """A spec file: JSON, or YAML when the name ends .yaml/.yml."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError([("<spec file>", path, f"valid JSON ({e})")]) from None


def example_spec() -> dict:
    """A tiny CPU run on the stdlib corpus (seconds on a laptop)."""
    return {
        "run_id": "tiny/muon/alpha0/seed42",
        "model": {"name": "tiny", "arch": "tiny"},
        "optimizer": {"arm": "muon", "class": "Muon",
                      "muon": {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0},
                      "adamw": {"lr": 0.003, "betas": [0.9, 0.95], "eps": 1.0e-8, "weight_decay": 0.0},
                      "split": {"adamw_patterns": list(DEFAULT_ADAMW_PATTERNS)}},
        "alpha": 0.0,
        "seed": 42,
        "training": {"steps": 100, "global_batch": 16, "micro_batch": 8, "seq_len": 64, "warmup_steps": 10,
                     "cooldown_frac": 0.2, "grad_clip": 0.0, "divergence_factor": 3.0},
        "eval": {"every": 25, "batches": 4, "at_steps": [50, 100], "target_losses": [3.0, 2.5]},
        "data": {"kind": "stdlib", "path": "results/data/stdlib"},
        "checkpoint": {"every": 50, "keep": False},
        "wandb": {"mode": "disabled", "project": "muon-ablations", "group": "example",
                  "tags": ["tiny", "muon", "alpha0", "seed42"], "dir": "results/wandb"},
        "runtime": {"device": "auto", "compile": "auto", "dtype": "auto"},
    }
