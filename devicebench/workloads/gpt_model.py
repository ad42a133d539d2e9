"""The model char_gpt trains: GPT-2's decoder blocks without biases, as nanoGPT's ``model.py`` defines it (written
here from that description; nanoGPT, karpathy, MIT, is the reference), and nanoGPT's FLOP formula for it.

Blocks are ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` with GELU and dropout; the token embedding is tied to the
output layer; weights start as GPT-2's (normal 0.02, residual projections scaled by 1/sqrt(2 * layers)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTSizes:
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    dropout: float = 0.2


class CausalSelfAttention(nn.Module):
    def __init__(self, sizes: GPTSizes):
        super().__init__()
        self.n_head, self.dropout = sizes.n_head, sizes.dropout
        self.c_attn = nn.Linear(sizes.n_embd, 3 * sizes.n_embd, bias=False)
        self.c_proj = nn.Linear(sizes.n_embd, sizes.n_embd, bias=False)
        self.attn_dropout = nn.Dropout(sizes.dropout)
        self.resid_dropout = nn.Dropout(sizes.dropout)
        # The tuned pipeline switches to scaled_dot_product_attention (fused kernels); the same math.
        self.fused = False
        mask = torch.tril(torch.ones(sizes.block_size, sizes.block_size, dtype=torch.bool))
        self.register_buffer("causal_mask", mask.view(1, 1, sizes.block_size, sizes.block_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                               is_causal=True)
        else:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            scores = scores.masked_fill(~self.causal_mask[:, :, :length, :length], float("-inf"))
            y = self.attn_dropout(F.softmax(scores, dim=-1)) @ v
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, sizes: GPTSizes):
        super().__init__()
        self.c_fc = nn.Linear(sizes.n_embd, 4 * sizes.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * sizes.n_embd, sizes.n_embd, bias=False)
        self.dropout = nn.Dropout(sizes.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, sizes: GPTSizes):
        super().__init__()
        self.ln_1 = nn.LayerNorm(sizes.n_embd, bias=False)
        self.attn = CausalSelfAttention(sizes)
        self.ln_2 = nn.LayerNorm(sizes.n_embd, bias=False)
        self.mlp = MLP(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, sizes: GPTSizes):
        super().__init__()
        self.sizes = sizes
        self.wte = nn.Embedding(sizes.vocab_size, sizes.n_embd)
        self.wpe = nn.Embedding(sizes.block_size, sizes.n_embd)
        self.drop = nn.Dropout(sizes.dropout)
        self.blocks = nn.ModuleList(Block(sizes) for _ in range(sizes.n_layer))
        self.ln_f = nn.LayerNorm(sizes.n_embd, bias=False)
        self.lm_head = nn.Linear(sizes.n_embd, sizes.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied, as GPT-2 and nanoGPT
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of the residual projections
                torch.nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * sizes.n_layer))
        self.register_buffer("positions", torch.arange(sizes.block_size), persistent=False)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def use_fused_attention(self, fused: bool) -> None:
        for block in self.blocks:
            block.attn.fused = fused

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.wte(tokens) + self.wpe(self.positions[: tokens.size(1)]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def non_embedding_parameters(sizes: GPTSizes) -> int:
    """nanoGPT's ``get_num_params()``: every parameter except the position embedding (the token embedding is the
    output layer's weight, so its matrix product counts)."""
    per_block = 12 * sizes.n_embd ** 2 + 2 * sizes.n_embd  # attention 4d², MLP 8d², two LayerNorm weights
    return sizes.n_layer * per_block + sizes.n_embd + sizes.vocab_size * sizes.n_embd


def flops_per_token(sizes: GPTSizes) -> float:
    """Training FLOPs per token, nanoGPT's ``estimate_mfu`` (PaLM, appendix B): 6N + 12·L·H·Q·T, with N the
    non-embedding parameters, L layers, H heads of width Q, context T. Forward alone is a third of it."""
    head_width = sizes.n_embd // sizes.n_head
    return 6 * non_embedding_parameters(sizes) + 12 * sizes.n_layer * sizes.n_head * head_width * sizes.block_size
