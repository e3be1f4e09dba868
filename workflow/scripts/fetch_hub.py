"""Entry point of the Hub download stage (trainer/hub.py): a shard set, dataset files or a model, at one commit.

    python workflow/scripts/fetch_hub.py --what shards --repo kjj0/fineweb10B-gpt2 --train-shards 4 --out-dir DIR
    python workflow/scripts/fetch_hub.py --what files --repo HuggingFaceFW/fineweb-edu \\
        --file 'sample/10BT/000_00000.parquet' --out-dir DIR
    python workflow/scripts/fetch_hub.py --what model --repo ibm-granite/granite-4.0-h-350m-base --out-dir DIR

Downloads into the Hugging Face cache (HF_HOME, HF_TOKEN, HF_HUB_OFFLINE and HF_ENDPOINT as the client reads
them), resumable; links the files under DIR and writes DIR/manifest.json last. Exit codes: 0 done, 2 a repo,
revision or file that cannot be used (the message names it), 1 anything else.
"""
import argparse
import json
import sys
from pathlib import Path

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fetch_hub.py", description=__doc__.splitlines()[0])
    p.add_argument("--what", required=True, choices=["shards", "files", "model"])
    p.add_argument("--repo", required=True, help="owner/name on the Hub")
    p.add_argument("--repo-type", default=None, choices=["dataset", "model"], help="default: model for --what model")
    p.add_argument("--revision", default="main", help="a branch, tag or commit (resolved to a commit once)")
    p.add_argument("--file", dest="files", action="append", default=[], help="a file name or glob (--what files)")
    p.add_argument("--train-shards", type=int, default=None, help="--what shards: train shards (plus the val shard)")
    p.add_argument("--prefix", default="fineweb", help="--what shards: the shards' name prefix (fineweb)")
    p.add_argument("--out-dir", required=True)
    a = p.parse_args(argv)
    from trainer.data import DataError
    from trainer.hub import HubRequest, fetch_files, fetch_model, fetch_shards

    req = HubRequest(a.repo, a.repo_type or ("model" if a.what == "model" else "dataset"), a.revision, a.files,
                     a.train_shards, a.prefix)
    try:
        fn = {"shards": fetch_shards, "files": fetch_files, "model": fetch_model}[a.what]
        m = fn(req, a.out_dir)
    except DataError as e:
        print(f"fetch_hub: {e}", file=sys.stderr)
        return 2
    print(f"fetch_hub: {m['repo_type']} {m['repo']}@{m['revision']} = commit {m['commit']}: {len(m['files'])} file(s), "
          f"{m['bytes']:,} bytes -> {a.out_dir}/manifest.json")
    print(json.dumps({k: m[k] for k in ("commit", "bytes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
