"""What the runs' specs take from the Hub stage, in one file: the data section (fetched shards, or text
prepared from fetched files) with its content checksum, and the commit of each hf:<Hub id> model.

    python workflow/scripts/pin_hub.py [--data MANIFEST] [--model NAME=MANIFEST ...] --out PINS.json
"""
import argparse
import sys
from pathlib import Path

try:
    import trainer  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from trainer.hub import load_manifest  # noqa: E402
from trainer.records import write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="pin_hub.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a fetch_hub shard manifest or a prepare_text manifest")
    p.add_argument("--model", action="append", default=[], metavar="NAME=MANIFEST")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    data, data_vocab = None, None
    if a.data:
        m = load_manifest(a.data)
        data = {"kind": "bin", "train": m["train"], "val": m["val"], "checksum": m["content_checksum"]}
        # the tokens' range: a prepared corpus's tokenizer, or GPT-2's for modded-nanogpt's shards
        data_vocab = m.get("vocab_size") or (50257 if m.get("kind") == "hub-shards" else None)
    models = {}
    for item in a.model:
        name, _, path = item.partition("=")
        mm = load_manifest(path)
        models[name] = mm["commit"]
        vocab = mm.get("vocab_size")
        if data_vocab and isinstance(vocab, int) and vocab < data_vocab:  # before any train job is submitted
            print(f"pin_hub: models.{name} ({mm['repo']}@{mm['commit'][:12]}) has {vocab} token ids, fewer than the "
                  f"data's {data_vocab} ({a.data}): tokenize the data with the model's tokenizer (data.tokenizer: "
                  f"model) or pick another model", file=sys.stderr)
            return 2
    write_json(a.out, {"data": data, "models": models})
    print(f"pin_hub: data {data and data['checksum'][:16]}, models {models}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
