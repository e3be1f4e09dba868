"""Data and models from the Hugging Face Hub, through `huggingface_hub` (its cache, HF_TOKEN, HF_HUB_OFFLINE).

    fetch_shards(HubRequest("kjj0/fineweb10B-gpt2", train_shards=4), "results/data/hub/fineweb10B")
    fetch_files(HubRequest("HuggingFaceFW/fineweb-edu", files=["sample/10BT/000_00000.parquet"]), out_dir)
    fetch_model(HubRequest("ibm-granite/granite-4.0-h-350m-base", repo_type="model"), out_dir)

Each resolves the revision (a branch, tag or commit) to its commit once and downloads every file at that
commit, so the manifest names exactly what was read; the commit enters the runs' fingerprints. Downloads
go into the Hub cache (`HF_HOME`/`HF_HUB_CACHE`): atomic (a blob is renamed into place when complete),
resumable (an interrupted `.incomplete` blob continues with an HTTP Range request, also after a killed
process), with the client's progress bars. Every file is then checked against the checksum the Hub
gives it (its ETag: the sha256 of an LFS file, the git blob sha1 of a small one); a file that does not
match is deleted from the cache and refused. With HF_HUB_OFFLINE=1 nothing is contacted: the revision
resolves from the cache's refs and the files must be there (a warm cache).

out_dir gets symlinks to the cached files (relative names the run specs can glob, independent of where
the cache lives) and manifest.json last (written atomically): its presence means a complete, checked set.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data import DataError, _sha256_file, shard_info, shards_checksum
from trainer.records import write_json

HUB_VERSION = 1
MANIFEST = "manifest.json"
REPO_TYPES = ("dataset", "model")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# modded-nanogpt's shard sets (kjj0/fineweb10B-gpt2, kjj0/finewebedu10B-gpt2): one val shard, train from 1
SHARD_VAL = "{prefix}_val_{i:06d}.bin"
SHARD_TRAIN = "{prefix}_train_{i:06d}.bin"
# what a causal LM needs from its repo (no duplicate pytorch_model.bin beside safetensors)
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py")


class HubError(DataError):
    """A Hub repository, revision or file that cannot be used, with the repo, file and reason."""


@dataclass
class HubRequest:
    repo: str
    repo_type: str = "dataset"
    revision: str = "main"
    files: list[str] = field(default_factory=list)  # names or globs in the repo
    train_shards: int | None = None  # shard sets: this many train shards and the val shard
    prefix: str = "fineweb"  # shard sets: the file names' prefix


def is_hub_id(path: str) -> bool:
    """'owner/name' that is no local directory (a local path keeps meaning a local model)."""
    return bool(REPO_ID.match(path)) and not Path(path).exists()


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _cache_repo_dir(repo: str, repo_type: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo.replace('/', '--')}"


def resolve(req: HubRequest) -> tuple[str, list[str]]:
    """(the commit the revision names, the repo's file names at it); offline from the cache."""
    if offline():
        d = _cache_repo_dir(req.repo, req.repo_type)
        commit = req.revision if COMMIT.match(req.revision) else None
        if commit is None:
            ref = d / "refs" / req.revision
            if not ref.is_file():
                raise HubError(f"{req.repo_type} {req.repo}@{req.revision}: HF_HUB_OFFLINE is set and the cache "
                               f"({d}) has no ref {req.revision!r}: fetch once with the network (a login node), "
                               f"or pin data/model revision to a cached commit")
            commit = ref.read_text().strip()
        snap = d / "snapshots" / commit
        if not snap.is_dir():
            raise HubError(f"{req.repo_type} {req.repo}@{commit}: HF_HUB_OFFLINE is set and the cache has no "
                           f"snapshot {snap}")
        names = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file() or p.is_symlink())
        return commit, names
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().repo_info(req.repo, repo_type=req.repo_type, revision=req.revision)
    except RepositoryNotFoundError:
        raise HubError(f"{req.repo_type} {req.repo}: no such repository on the Hub (or it is gated/private: "
                       f"set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise HubError(f"{req.repo_type} {req.repo}: no revision {req.revision!r}") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubError(f"{req.repo_type} {req.repo}@{req.revision}: the Hub cannot be reached ({e}); downloads "
                       f"run where the network is (snakemake runs them as local jobs on the login node)") from None
    if not info.sha or not COMMIT.match(info.sha):
        raise HubError(f"{req.repo_type} {req.repo}@{req.revision}: the Hub gave no commit for it ({info.sha!r})")
    if req.revision != info.sha:  # the cache's ref, as the client keeps it: an offline fetch resolves it later
        ref = _cache_repo_dir(req.repo, req.repo_type) / "refs" / req.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(info.sha)
        os.replace(tmp, ref)
    return info.sha, sorted(s.rfilename for s in (info.siblings or []))


def select(req: HubRequest, names: list[str], patterns) -> list[str]:
    """The repo's files matching each name or glob, in the order given; a pattern matching nothing is an error."""
    out = []
    for pat in patterns:
        hits = [n for n in names if n == pat] or sorted(n for n in names if fnmatch.fnmatchcase(n, pat))
        if not hits:
            near = [n for n in names if Path(n).suffix == Path(pat).suffix][:8] or names[:8]
            raise HubError(f"{req.repo_type} {req.repo}: no file matches {pat!r} (of {len(names)} files; e.g. {near})")
        out += [h for h in hits if h not in out]
    return out


def git_blob_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(req: HubRequest, name: str, local: str) -> str:
    """The file's sha256, after checking it against the Hub's checksum (its cache blob is named by its
    ETag); a mismatch deletes the blob and the snapshot link, so the next fetch downloads it again."""
    blob = os.path.realpath(local)
    etag = os.path.basename(blob)
    sha256 = _sha256_file(blob)
    if re.fullmatch(r"[0-9a-f]{64}", etag):
        ok, what = sha256 == etag, "sha256"
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        ok, what = git_blob_sha1(blob) == etag, "git blob sha1"
    else:
        ok, what = True, "none"
    if not ok:
        for p in (local, blob):
            try:
                os.remove(p)
            except FileNotFoundError:
                pass
        raise HubError(f"{req.repo_type} {req.repo}: {name}: its content does not match the Hub's {what} {etag[:16]}... "
                       f"(got sha256 {sha256[:16]}...): a corrupt download or a changed mirror; the file was removed "
                       f"from the cache, run the fetch again")
    return sha256


def download(req: HubRequest, commit: str, names: list[str]) -> list[dict]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    out = []
    for name in names:
        try:
            local = hf_hub_download(req.repo, name, repo_type=req.repo_type, revision=commit)
        except LocalEntryNotFoundError as e:
            raise HubError(f"{req.repo_type} {req.repo}@{commit}: {name}: not in the cache and not downloadable "
                           f"here ({e})") from None
        except (HfHubHTTPError, OSError) as e:
            raise HubError(f"{req.repo_type} {req.repo}@{commit}: {name}: download failed ({e}); run the fetch "
                           f"again, it resumes") from None
        out.append({"name": name, "cached": local, "size": os.path.getsize(local),
                    "sha256": verify(req, name, local)})
    return out


def _link(files: list[dict], out_dir: Path) -> None:
    """Symlinks out_dir/<name> -> the cached file (old ones and the old manifest removed first)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for f in files:
        link = out_dir / f["name"]
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(link.name + ".tmp-link")
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.abspath(f["cached"]), tmp)
        os.replace(tmp, link)


def _manifest(kind: str, req: HubRequest, commit: str, files: list[dict], out_dir: Path, **extra) -> dict:
    m = {"kind": kind, "hub_version": HUB_VERSION, "repo": req.repo, "repo_type": req.repo_type,
         "revision": req.revision, "commit": commit,
         "files": [{k: f[k] for k in ("name", "size", "sha256")} for f in files],
         "bytes": sum(f["size"] for f in files), "dir": str(out_dir), **extra}
    write_json(out_dir / MANIFEST, m)  # last: its presence means every file is there and checked
    return m


def shard_names(req: HubRequest) -> tuple[list[str], list[str]]:
    n = req.train_shards
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise HubError(f"data.train_shards = {n!r}: an integer >= 1 (modded-nanogpt's shards hold 100M tokens each)")
    return ([SHARD_TRAIN.format(prefix=req.prefix, i=i) for i in range(1, n + 1)],
            [SHARD_VAL.format(prefix=req.prefix, i=0)])


def fetch_shards(req: HubRequest, out_dir: str | os.PathLike) -> dict:
    """A pre-tokenized shard set (modded-nanogpt's format): N train shards and the val shard, each header
    checked by the trainer's reader; the manifest carries the run spec's data section."""
    out = Path(out_dir)
    commit, names = resolve(req)
    train, val = shard_names(req)
    missing = [n for n in train + val if n not in names]
    if missing:
        have = sorted(n for n in names if n.endswith(".bin"))
        raise HubError(f"dataset {req.repo}@{commit}: no {missing[:4]} (its .bin files: {have[:3]} ... {have[-2:]}, "
                       f"{len(have)} in all); lower data.train_shards or name another prefix")
    files = download(req, commit, train + val)
    tokens, dtypes = {}, set()
    for f in files:
        n, dtype = shard_info(f["cached"])  # magic, version, size: DataError naming the file
        tokens[f["name"]], _ = n, dtypes.add(dtype)
    _link(files, out)
    tr, va = [str(out / n) for n in train], [str(out / n) for n in val]
    sums = {str(out / f["name"]): f["sha256"] for f in files}
    return _manifest("hub-shards", req, commit, files, out, tokens=tokens, dtype=sorted(dtypes),
                     train=str(out / f"{req.prefix}_train_*.bin"), val=str(out / f"{req.prefix}_val_*.bin"),
                     content_checksum=shards_checksum(tr, va, sums))


def fetch_files(req: HubRequest, out_dir: str | os.PathLike) -> dict:
    """Raw files of a dataset repo (parquet/jsonl/txt for the text stage), linked under out_dir."""
    out = Path(out_dir)
    commit, names = resolve(req)
    files = download(req, commit, select(req, names, req.files))
    _link(files, out)
    return _manifest("hub-files", req, commit, files, out, inputs=[str(out / f["name"]) for f in files])


def fetch_model(req: HubRequest, out_dir: str | os.PathLike) -> dict:
    """A model repo's config, weights and tokenizer at one commit; the trainer loads it from the cache."""
    out = Path(out_dir)
    commit, names = resolve(req)
    wanted = [n for n in names if "/" not in n and any(fnmatch.fnmatchcase(n, p) for p in MODEL_PATTERNS)]
    if "config.json" not in wanted:
        raise HubError(f"model {req.repo}@{commit}: no config.json: not a transformers model repo")
    files = download(req, commit, wanted)
    _link(files, out)
    import json

    cfg = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return _manifest("hub-model", req, commit, files, out, vocab_size=cfg.get("vocab_size"),
                     model_type=cfg.get("model_type"), snapshot=str(Path(files[0]["cached"]).parent))


def cached_model_dir(repo: str, commit: str) -> str:
    """The cached snapshot of a model at a commit (the trainer, on a compute node: nothing downloaded)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, revision=commit, local_files_only=True)
    except (LocalEntryNotFoundError, OSError) as e:
        raise HubError(f"model {repo}@{commit}: not in this node's Hub cache ({e}); the fetch_hub job downloads it "
                       f"on the login node: share HF_HOME between login and compute nodes") from None


def load_manifest(path: str | os.PathLike) -> dict:
    import json

    p = Path(path)
    try:
        return json.loads((p / MANIFEST if p.is_dir() else p).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HubError(f"{p}: no manifest: the fetch_hub job has not finished there") from None
