"""`model.arch: hf:<local path>` or `hf:<Hub id>`: a Hugging Face causal LM loaded from disk only.

A Hub id (`hf:ibm-granite/granite-4.0-h-350m-base`) is downloaded before any job by the workflow's
fetch_hub stage (trainer/hub.py) into the Hugging Face cache; its run spec carries the commit fetched
(`model.revision`, in the fingerprint), and the trainer loads that snapshot from the cache, offline.

`transformers` is an optional extra (`pip install 'muon-ablations[hf]'`); it is imported only here and
only when such a model is asked for. Loading uses `local_files_only=True`: nothing is downloaded, and a
path that holds no model is an error that says so. Weights are trained in float32 (bf16 autocast on
GPU, as for the presets).

The data must be tokenized with the model's own tokenizer (a .bin shard set made for it); the stdlib
byte corpus runs (byte values are valid token ids) but is no real fine-tuning data for such a model.

Parameter names are the model's own under the prefix `hf.` (e.g. `hf.model.embed_tokens.weight`,
`hf.lm_head.weight`, `hf.model.layers.0.input_layernorm.weight`); the default AdamW patterns `embed`,
`wte`, `lm_head`, `norm` cover Llama/Granite and GPT-2 (`wte`; GPT-2's `wpe` and `ln_*` gains are
1-D or must be added to the patterns by the spec).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.model import ModelError


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class HFCausalLM(nn.Module):
    def __init__(self, path: str, revision: str | None = None):
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise ModelError(f"model.arch 'hf:{path}' needs the optional package transformers "
                             "(pip install 'muon-ablations[hf]')") from None
        from trainer.hub import cached_model_dir, is_hub_id

        if revision is not None or is_hub_id(path):
            if revision is None:
                raise ModelError(f"model.arch 'hf:{path}': a Hub id needs model.revision (the commit the workflow's "
                                 "fetch_hub stage pinned); or give a local path")
            try:
                p = Path(cached_model_dir(path, revision))
            except Exception as e:  # HubError: not in this node's cache
                raise ModelError(str(e)) from None
        else:
            p = Path(path)
        if not p.is_dir() or not (p / "config.json").exists():
            raise ModelError(f"model.arch 'hf:{path}': no Hugging Face model directory there (config.json missing); "
                             "only local paths are loaded, nothing is downloaded")
        try:
            hf = transformers.AutoModelForCausalLM.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"model.arch 'hf:{path}': cannot load a causal LM from disk: {e}") from None
        self.hf = hf.float()
        cfg = hf.config
        self.vocab_size = int(cfg.vocab_size)
        self.block_size = int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
                              or 1 << 20)
        self.n_layer = int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", 0))
        self.n_embd = int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0))
        self.source = str(p.resolve())
        self.transformers_version = transformers.__version__

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.size(1) > self.block_size:
            raise ModelError(f"sequence length {idx.size(1)} exceeds the model's {self.block_size} positions")
        logits = self.hf(input_ids=idx, use_cache=False).logits
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> float:
        emb = self.hf.get_input_embeddings().weight
        n = sum(p.numel() for p in self.parameters() if p.dim() == 2 and p is not emb)
        out = self.hf.get_output_embeddings()
        if out is not None and out.weight is emb:
            n += emb.numel()
        return 6.0 * n + 12.0 * self.n_layer * self.n_embd * seq_len


def build(arch: str, vocab_size: int | None = None, tie_embeddings: bool = False, options: dict | None = None,
          revision: str | None = None) -> HFCausalLM:
    """The Hugging Face family's models (trainer/models/families.py "hf"): arch hf:<local path or Hub id>."""
    if options:
        raise ModelError(f"model.options {options!r}: only the nGPT presets take options")
    return HFCausalLM(arch[3:], revision=revision)
