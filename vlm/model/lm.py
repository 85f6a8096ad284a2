"""OpenLM-style decoder-only language model, in one file (nanoGPT-style).

Pre-norm blocks with gain-only LayerNorm, rotary position embeddings, qk-norm, a SwiGLU MLP and
attention through `F.scaled_dot_product_attention`; no biases, no dropout. The sizes of the study's
Table 2 are in `PRESETS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LMConfig:
    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_head: int | None = None  # None: d_model // n_head (OpenLM lets n_head * d_head differ from d_model)
    ffn_hidden: int | None = None  # None: 8/3 * d_model rounded up to a multiple of ffn_multiple_of
    ffn_multiple_of: int = 256  # OpenLM's rounding; the tiny preset uses 32 so its MLP stays ~8/3
    max_seq_len: int = 256  # longest sequence the model accepts (RoPE itself has no table)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    # Untied input and output embeddings, as OpenLM; with them the 79m/1.4b presets reach their names'
    # parameter counts at a 50k vocabulary (the embeddings are about 2/3 of the 79m model).
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.d_head is None:
            self.d_head = self.d_model // self.n_head
        if self.ffn_hidden is None:
            m = self.ffn_multiple_of
            self.ffn_hidden = m * math.ceil(int(8 * self.d_model / 3) / m)
        if self.d_head % 2:
            raise ValueError(f"rotary embeddings need an even d_head, got {self.d_head}")


PRESETS: dict[str, dict] = {
    "tiny": dict(n_layer=4, n_head=4, d_model=128, d_head=32, ffn_multiple_of=32),  # the CPU default
    "79m": dict(n_layer=8, n_head=4, d_model=512, d_head=128),
    "1.4b": dict(n_layer=24, n_head=16, d_model=2048, d_head=128),
}


def lm_config(preset: str, vocab_size: int, max_seq_len: int, **overrides) -> LMConfig:
    """The config of a named preset; `overrides` replace single fields."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return LMConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **{**PRESETS[preset], **overrides})


def _norm(dim: int, eps: float) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=eps, elementwise_affine=True, bias=False)  # gain-only, as OpenLM


def rotary_tables(seq_len: int, d_head: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, (seq_len, d_head // 2) in float32.

    Computed per forward (it is tiny) rather than stored as a buffer, so a model built on the meta
    device or loaded from a state dict never carries a stale table.
    """
    inv_freq = theta ** -(torch.arange(0, d_head, 2, device=device, dtype=torch.float32) / d_head)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, T, D) queries or keys; the two halves of D form the pairs (GPT-NeoX layout)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_head, self.d_head = cfg.n_head, cfg.d_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_head * cfg.d_head, bias=False)
        self.out = nn.Linear(cfg.n_head * cfg.d_head, cfg.d_model, bias=False)
        self.q_norm = _norm(cfg.d_head, cfg.norm_eps)
        self.k_norm = _norm(cfg.d_head, cfg.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attention output and this layer's keys and values (the cached `past` ones first)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)
        q = apply_rotary(self.q_norm(q), cos, sin)
        k = apply_rotary(self.k_norm(k), cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.out(y.transpose(1, 2).reshape(B, T, self.n_head * self.d_head)), (k, v)


class SwiGLU(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.w12 = nn.Linear(cfg.d_model, 2 * cfg.ffn_hidden, bias=False)  # gate and up, fused
        self.w3 = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.attn_norm = _norm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = _norm(cfg.d_model, cfg.norm_eps)
        self.ffn = SwiGLU(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        y, kv = self.attn(self.attn_norm(x), cos, sin, mask, past)
        x = x + y
        return x + self.ffn(self.ffn_norm(x)), kv


@dataclass
class KVCache:
    """The keys and values of every position a decoder has seen, per layer, (B, H, T, d_head) each.

    Greedy decoding fills it with the prompt (prefill), then feeds one new token per call: each
    step attends to the cached positions instead of recomputing the whole prefix.
    """

    layers: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0


class LM(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.norm = _norm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.init_weights()

    def init_weights(self) -> None:
        """normal(0, init_std) everywhere; the projections into the residual stream get
        init_std / sqrt(2 * n_layer) so the stream's variance does not grow with depth (GPT-2)."""
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
        for block in self.blocks:
            for proj in (block.attn.out, block.ffn.w3):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.cfg.n_layer))

    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        """FSDP's units (Composer asks this of every submodule): each block gathers its weights for
        its own forward and backward only; the embeddings and the head stay with the root."""
        return isinstance(module, Block)

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, d_model) input embeddings."""
        return self.tok_emb(input_ids)

    def forward_embeds(self, embeds: Tensor, pad_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """(B, T, d_model) embeddings -> (B, T, vocab_size) logits.

        pad_mask (B, T), True on real tokens, is for left-padded batches (generation, scoring):
        keys that are padding are masked out. Every position may still attend to itself, so rows
        of padding stay finite. RoPE is relative, so real tokens get the logits of the unpadded
        sequence.

        With a `cache`, `embeds` are the positions after the cached ones; their keys and values are
        appended to it, and pad_mask (when given) covers the cached positions too: (B, past + T).
        """
        B, T, _ = embeds.shape
        past = cache.length if cache is not None else 0
        total = past + T
        if total > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {total} tokens is longer than max_seq_len={self.cfg.max_seq_len}")
        cos, sin = rotary_tables(total, self.cfg.d_head, self.cfg.rope_theta, embeds.device)
        cos, sin = cos[past:], sin[past:]
        mask = None
        if pad_mask is not None or past:
            # query i sits at position past + i: it sees keys up to there, and always itself
            dev = embeds.device
            mask = torch.ones(T, total, dtype=torch.bool, device=dev).tril(diagonal=past)
            if pad_mask is not None:
                if pad_mask.shape != (B, total):
                    raise ValueError(f"pad_mask of shape {tuple(pad_mask.shape)}; expected {(B, total)}")
                mask = mask & pad_mask.bool()[:, None, None, :]
                itself = torch.zeros(T, total, dtype=torch.bool, device=dev)
                itself[torch.arange(T, device=dev), past + torch.arange(T, device=dev)] = True
                mask = mask | itself  # (B, 1, T, total)
        x, layers = embeds, []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, cos, sin, mask, cache.layers[i] if past else None)
            layers.append(kv)
        if cache is not None:
            cache.layers = layers
        return self.lm_head(self.norm(x))

    def forward(self, input_ids: Tensor, pad_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        return self.forward_embeds(self.embed(input_ids), pad_mask, cache)


def masked_lm_loss(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean next-token cross entropy over the targets that loss_mask marks.

    Position t predicts input_ids[:, t + 1], which counts where loss_mask[:, t + 1] is nonzero:
    loss_mask marks the trained TOKENS (text, captions, assistant answers), never image tokens,
    padding or user turns. With nothing marked the loss is a differentiable zero.
    """
    targets = input_ids[:, 1:]
    weight = loss_mask[:, 1:].to(torch.float32)
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none")
    return (ce * weight.flatten()).sum() / weight.sum().clamp(min=1.0)


def num_params(model: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters; exclude_embeddings drops embedding tables and LM output heads."""
    skip: set[int] = set()
    if exclude_embeddings:
        for m in model.modules():
            if isinstance(m, nn.Embedding):
                skip.update(id(p) for p in m.parameters())
            elif isinstance(m, LM):
                skip.update(id(p) for p in m.lm_head.parameters())
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
