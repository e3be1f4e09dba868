"""What a study fetches from the Hugging Face Hub, planned without contacting it (trainer/hub.py downloads).

    data: {kind: hub, repo: kjj0/fineweb10B-gpt2, train_shards: 4}              # a pre-tokenized shard set
    data: {kind: hub, repo: HuggingFaceFW/fineweb-edu, files: [sample/10BT/000_00000.parquet, ...],
           tokenizer: model, val_fraction: 1.0e-3}                               # raw files -> the text stage
    models: {granite-350m: {arch: "hf:ibm-granite/granite-4.0-h-350m-base", ...}}  # a model by its Hub id

Each is one fetch item, `results/hub/ITEM/manifest.json` (ITEM `data--NAME` or `model--OWNER--NAME`), made
by the local fetch_hub rule. `tokenizer: model` tokenizes the files with the tokenizer of the study's Hub
model (the first one its phases run). The manifests pin the commit each revision named; the commit (a
model's) and the shards' content checksum (the data's) enter the runs' fingerprints.
"""

from __future__ import annotations

import hashlib
import json

from trainer.hub import REPO_ID, is_hub_id

HUB_DIR = "results/hub"
SHARD_KEYS = ("kind", "name", "repo", "revision", "train_shards", "prefix")
FILE_KEYS = ("kind", "name", "repo", "revision", "files")
MODEL_TOKENIZER = "model"
GPT2_VOCAB = 50257  # modded-nanogpt's shards hold GPT-2 tokens


def is_shards(d: dict) -> bool:
    return d.get("kind") == "hub" and "train_shards" in d


def data_item(d: dict) -> str:
    if d.get("name"):
        return f"data--{d['name']}"
    key = {k: d[k] for k in sorted(d) if k in SHARD_KEYS + FILE_KEYS and k != "name"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"data--{d['repo'].replace('/', '--')}-{digest}"


def hub_model_id(arch: str) -> str | None:
    """The Hub id of an `hf:` arch that names one (not a local directory), else None."""
    if arch.startswith("hf:") and is_hub_id(arch[3:]):
        return arch[3:]
    return None


def model_item(repo: str) -> str:
    return "model--" + repo.replace("/", "--")


def models_used(config: dict) -> list[str]:
    """The models the study's phases run (a phase's model and its scratch model), in phase order."""
    out = []
    for p in config["phases"].values():
        for m in (p["model"], p.get("scratch", {}).get("model")):
            if m and m not in out:
                out.append(m)
    return out


def tokenizer_model(config: dict) -> str | None:
    """The Hub id whose tokenizer `tokenizer: model` means: the first Hub model the phases run."""
    for m in models_used(config):
        repo = hub_model_id(config["models"].get(m, {}).get("arch", ""))
        if repo:
            return repo
    return None


def fetch_items(config: dict) -> dict[str, dict]:
    """item -> the fetch request (fetch_hub.py's arguments as a dict); only what the phases use."""
    items = {}
    d = config["data"]
    if d["kind"] == "hub":
        req = {"what": "shards" if is_shards(d) else "files", "repo": d["repo"], "repo_type": "dataset",
               "revision": d.get("revision", "main")}
        if is_shards(d):
            req.update(train_shards=d["train_shards"], prefix=d.get("prefix", "fineweb"))
        else:
            req["files"] = list(d.get("files", []))
        items[data_item(d)] = req
    for m in models_used(config):
        spec = config["models"].get(m, {})
        repo = hub_model_id(spec.get("arch", ""))
        if repo:
            items.setdefault(model_item(repo), {"what": "model", "repo": repo, "repo_type": "model",
                                                "revision": spec.get("revision", "main")})
    return items


def fetch_args(req: dict, out_dir: str) -> list[str]:
    args = ["--what", req["what"], "--repo", req["repo"], "--repo-type", req["repo_type"],
            "--revision", req["revision"], "--out-dir", out_dir]
    for f in req.get("files", []):
        args += ["--file", f]
    if req["what"] == "shards":
        args += ["--train-shards", str(req["train_shards"]), "--prefix", req["prefix"]]
    return args


def text_section(config: dict) -> dict:
    """The text stage's data section for fetched raw files, known before they are fetched: their links'
    names or globs under results/hub/ITEM/ as inputs, `tokenizer: model` as `hf:<the model's linked directory>`."""
    d = config["data"]
    out = {k: v for k, v in d.items() if k not in FILE_KEYS}
    out["kind"] = "text"
    out["inputs"] = [f"{HUB_DIR}/{data_item(d)}/{f}" for f in d["files"]]
    if d.get("tokenizer") == MODEL_TOKENIZER:
        out["tokenizer"] = f"hf:{HUB_DIR}/{model_item(tokenizer_model(config))}"
    return out


def text_stage_manifests(config: dict) -> list[str]:
    """The fetch manifests the text stage reads (the files, and the model whose tokenizer it uses)."""
    d = config["data"]
    out = [f"{HUB_DIR}/{data_item(d)}/manifest.json"]
    if d.get("tokenizer") == MODEL_TOKENIZER:
        out.append(f"{HUB_DIR}/{model_item(tokenizer_model(config))}/manifest.json")
    return out


def model_manifests(config: dict) -> dict[str, str]:
    """model name -> its fetch manifest, for the phases' hf:<Hub id> models."""
    out = {}
    for m in models_used(config):
        repo = hub_model_id(config["models"][m]["arch"])
        if repo:
            out[m] = f"{HUB_DIR}/{model_item(repo)}/manifest.json"
    return out


def check_hub_data(d: dict, config: dict) -> list[str]:
    """Problems of a `data: {kind: hub}` section, one line each (no network)."""
    bad = []
    repo = d.get("repo")
    if not isinstance(repo, str) or not REPO_ID.match(repo):
        bad.append(f"data.repo: {repo!r} is not allowed (a Hub dataset id, owner/name)")
    rev = d.get("revision", "main")
    if not isinstance(rev, str) or not rev:
        bad.append(f"data.revision: {rev!r} is not allowed (a branch, tag or commit)")
    if is_shards(d):
        extra = sorted(set(d) - set(SHARD_KEYS))
        bad += [f"data.{k}: not allowed with train_shards (a shard set takes {list(SHARD_KEYS[1:])})" for k in extra]
        n = d["train_shards"]
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            bad.append(f"data.train_shards: {n!r} is not allowed (an integer >= 1; 100M tokens each)")
        return bad
    files = d.get("files")
    if not (isinstance(files, list) and files and all(isinstance(f, str) and f for f in files)):
        bad.append(f"data.files: {files!r} is not allowed (file names or globs in the repo; or train_shards: N "
                   "for a pre-tokenized shard set)")
    if "tokenizer" not in d:
        bad.append("data.tokenizer: required with data.files (`model`: the study's Hub model's own; or a text-stage "
                   "tokenizer: tiktoken:gpt2, bpe:N, json:PATH, hf:DIR)")
    elif d["tokenizer"] == MODEL_TOKENIZER and tokenizer_model(config) is None:
        bad.append("data.tokenizer: 'model' needs a model of the study given by its Hub id (hf:owner/name)")
    return bad
