"""char_gpt: a decoder-only transformer trained on Tiny Shakespeare, sized as nanoGPT's ``train_shakespeare_char``.

The first post's author wants Macs for LLM work; this row has what the other two lack (attention, layer norm, an
embedding tied to the output layer, AdamW over ~10.7M parameters). nanoGPT (karpathy, MIT) is the reference for the
configuration, the schedule and the FLOP formula; the code is written here:

- GPT-2 blocks without biases: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``, GELU, dropout 0.2, weights tied between
  the token embedding and the output layer, nanoGPT's initialisation;
- ``AdamW(lr 1e-3, betas (0.9, 0.99))``, weight decay 0.1 on matrices and embeddings only, gradient norm clipped at
  1.0, linear warm-up over 100 iterations then cosine decay to 1e-4 at 5,000 (the learning rate of iteration k is
  the same in every pipeline);
- a batch is ``batch_size`` windows of ``block_size`` tokens at random offsets, the target shifted by one.

A *sample* is one window, so ``samples_per_s`` is windows per second; rows add ``tokens_per_s`` and
``ms_per_iteration``. A round is ``train_samples / batch_size`` training iterations and a validation pass over
``valid_samples`` windows at fixed, evenly spaced offsets of the validation split. The sizes of each scale are in
scales.toml: ``quick`` (CI), ``standard`` (shakespeare_char's model and batch) and ``gpt2`` (GPT-2 124M, block 1024,
batch 12, vocabulary 50304, synthetic tokens; accelerators only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from devicebench import devices
from devicebench.data.shakespeare import load_shakespeare, synthetic_tokens
from devicebench.flops import FlopCounts
from devicebench.parity import ParityCase
from devicebench.scales import Scale
from devicebench.tuning import WorkloadTraits
from devicebench.workloads.base import RunConfig, Stopwatch, WorkloadRun, unwrapped
from devicebench.workloads.gpt_model import GPT, GPTSizes, flops_per_token
from devicebench.workloads.tuned import TunedSetup

NAME = "char_gpt"
VERSION = 1
HAS_CONVOLUTIONS = False
LEARNING_RATE, MIN_LEARNING_RATE = 1e-3, 1e-4
WARMUP_ITERATIONS, DECAY_ITERATIONS = 100, 5000
BETAS = (0.9, 0.99)
WEIGHT_DECAY = 0.1
GRADIENT_CLIP = 1.0


def sizes_of(scale: Scale, vocab_size: int | None = None) -> GPTSizes:
    """The model a scale trains; ``vocab_size``: the data's, where the scale does not fix one."""
    model = dict(scale.model)
    model.setdefault("vocab_size", vocab_size or 65)
    return GPTSizes(**model)


def make_model(sizes: GPTSizes, seed: int) -> GPT:
    """Deterministic initial weights, made on the cpu so every device starts equal."""
    torch.manual_seed(seed)
    return GPT(sizes)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


def make_optimizer(model: nn.Module, **kwargs) -> torch.optim.AdamW:
    """nanoGPT's groups: weight decay on tensors of 2 or more dimensions (matrices, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kwargs.setdefault("lr", LEARNING_RATE)
    return torch.optim.AdamW(groups, betas=BETAS, **kwargs)


def learning_rate(iteration: int) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine decay to the minimum, then the minimum."""
    if iteration < WARMUP_ITERATIONS:
        return LEARNING_RATE * (iteration + 1) / (WARMUP_ITERATIONS + 1)
    if iteration > DECAY_ITERATIONS:
        return MIN_LEARNING_RATE
    ratio = (iteration - WARMUP_ITERATIONS) / (DECAY_ITERATIONS - WARMUP_ITERATIONS)
    return MIN_LEARNING_RATE + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LEARNING_RATE - MIN_LEARNING_RATE)


def flop_counts(scale: Scale) -> FlopCounts:
    """Per window of ``block_size`` tokens: training (forward and backward) and validation (forward)."""
    sizes = sizes_of(scale)
    per_window = flops_per_token(sizes) * sizes.block_size
    return FlopCounts(train_per_sample=per_window, eval_per_sample=per_window / 3)


def parity_case(steps: int = 3, seed: int = 0) -> ParityCase:
    """A few steps of a small model on fixed windows, dropout off: two devices' dropout masks never agree."""
    sizes = GPTSizes(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=65, dropout=0.0)
    tokens = synthetic_tokens(length=2 * steps * 8 * 33, seed=seed).train  # 90% of it is the train split
    windows = tokens[: steps * 8 * 33].view(steps * 8, 33)
    batches = [(chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()) for chunk in windows.split(8)]
    return ParityCase(make_model(sizes, seed), make_optimizer, batches, token_loss)


def window_index(offsets: torch.Tensor, block_size: int) -> torch.Tensor:
    """[windows, block_size + 1] positions: each window's inputs and, shifted by one, its targets."""
    return offsets[:, None] + torch.arange(block_size + 1, device=offsets.device)


class _GptRun(WorkloadRun):
    def __init__(self, config: RunConfig):
        super().__init__(config)
        scale = config.scale
        vocab_size = dict(scale.model).get("vocab_size")
        if vocab_size is not None:  # GPT-2's vocabulary: no text of it here, so synthetic tokens
            self.tokens, self.data_source = synthetic_tokens(vocab_size=vocab_size, seed=config.seed), "synthetic"
        else:
            self.tokens, self.data_source = load_shakespeare(config.data_mode, config.data_dir)
        self.sizes = sizes_of(scale, self.tokens.vocab_size)
        block = self.sizes.block_size
        self.iterations_per_round = -(-scale.train_samples // scale.batch_size)
        self.iteration = 0  # the learning rate schedule's position
        # Validation windows at fixed, evenly spaced offsets: every round and pipeline validates on the same text.
        last_start = len(self.tokens.valid) - block - 1
        self.valid_offsets = torch.linspace(0, last_start, scale.valid_samples).long()
        self.model = self.distributed(make_model(self.sizes, config.seed).to(self.device), constant_buffers=True)
        self.optimizer = make_optimizer(self.model)

    @property
    def samples_per_round(self) -> int:
        return self.iterations_per_round * self.config.scale.batch_size

    def describe(self) -> dict:
        return {**super().describe(), "block_size": self.sizes.block_size, "n_layer": self.sizes.n_layer,
                "n_embd": self.sizes.n_embd, "vocab_size": self.sizes.vocab_size,
                "tokens_per_sample": self.sizes.block_size, "iterations_per_round": self.iterations_per_round}

    def next_offsets(self) -> torch.Tensor:
        """One iteration's window offsets, drawn on the cpu from the seeded generator (same windows on every
        device)."""
        high = len(self.tokens.train) - self.sizes.block_size - 1
        return torch.randint(high, (self.config.scale.batch_size,), generator=self.order_generator)

    def set_learning_rate(self) -> None:
        rate = learning_rate(self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = rate
        self.iteration += 1

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.set_learning_rate()
        loss = token_loss(self.model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def final_evaluation(self) -> tuple[float, float]:
        """Validation loss and next-character accuracy over the validation windows."""
        self.model.eval()
        valid = self.tokens.valid.to(self.device)
        index = window_index(self.valid_offsets.to(self.device), self.sizes.block_size)
        loss_sum, correct = torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        for chunk in index.split(self.config.scale.valid_batch_size):
            windows = valid[chunk]
            logits = self.model(windows[:, :-1])
            loss_sum += token_loss(logits, windows[:, 1:], reduction="sum")
            correct += (logits.argmax(-1) == windows[:, 1:]).sum()
        tokens = len(self.valid_offsets) * self.sizes.block_size
        return (loss_sum / tokens).item(), (correct / tokens).item()


class SeedRun(_GptRun):
    """A laptop user's nanoGPT loop: each batch gathered on the cpu from the token array and copied to the device
    (pinned and non-blocking on cuda, as nanoGPT's ``get_batch``), ``loss.item()`` every iteration, float32,
    eager, attention written out (masked softmax)."""

    def get_batch(self, split: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        windows = split[window_index(offsets, self.sizes.block_size)]
        x, y = windows[:, :-1], windows[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return devices.to_device(x.contiguous(), self.device), devices.to_device(y.contiguous(), self.device)

    def train_epoch(self, waits: Stopwatch) -> float:
        self.model.train()
        losses = []
        for _ in waits.iterate(range(self.iterations_per_round)):
            x, y = self.get_batch(self.tokens.train, self.next_offsets())
            losses.append(self.train_step(x, y).item())
        return sum(losses) / len(losses)

    @torch.no_grad()
    def validate(self, waits: Stopwatch) -> float:
        self.model.eval()
        losses = []
        for offsets in waits.iterate(self.valid_offsets.split(self.config.scale.valid_batch_size)):
            x, y = self.get_batch(self.tokens.valid, offsets)
            losses.append(token_loss(self.model(x), y).item() * len(offsets))
        return sum(losses) / len(self.valid_offsets)


class ResidentRun(_GptRun):
    """The same math with the token arrays on the device: a round's offsets copied once, windows gathered there,
    losses summed there."""

    def __init__(self, config: RunConfig):
        super().__init__(config)
        self.train_d = devices.to_device(self.tokens.train, self.device)
        self.valid_d = devices.to_device(self.tokens.valid, self.device)
        self.valid_index = window_index(devices.to_device(self.valid_offsets, self.device), self.sizes.block_size)

    def round_offsets(self) -> torch.Tensor:
        """The round's offsets, [iterations, batch], drawn as SeedRun draws them, copied in one piece."""
        offsets = torch.stack([self.next_offsets() for _ in range(self.iterations_per_round)])
        return devices.to_device(offsets, self.device)

    def train_epoch(self, waits: Stopwatch) -> torch.Tensor:
        self.model.train()
        total = torch.zeros((), device=self.device)
        offsets = self.round_offsets()
        for step in waits.iterate(range(self.iterations_per_round)):
            total += self.train_on_windows(self.train_d[window_index(offsets[step], self.sizes.block_size)])
        return total / self.iterations_per_round

    def train_on_windows(self, windows: torch.Tensor) -> torch.Tensor:
        return self.train_step(windows[:, :-1], windows[:, 1:])

    def valid_loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return token_loss(self.model(x), y, reduction="sum")

    @torch.no_grad()
    def validate(self, waits: Stopwatch) -> torch.Tensor:
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for index in waits.iterate(self.valid_index.split(self.config.scale.valid_batch_size)):
            windows = self.valid_d[index]
            total += self.valid_loss_sum(windows[:, :-1], windows[:, 1:])
        return total / (len(self.valid_offsets) * self.sizes.block_size)


GRAPH_WARMUP_STEPS = 3  # eager steps on a side stream before capture, as torch.cuda.graphs' docs require


class TunedRun(TunedSetup, ResidentRun):
    """``resident`` made fast: scaled_dot_product_attention, autocast, fused AdamW, torch.compile, and on cuda
    one training iteration (forward, backward, clipping, AdamW) captured as a CUDA graph and replayed; each
    iteration's windows are gathered as ``resident`` gathers them and copied into the graph's input first.

    The learning rate lives in a device tensor that the graph reads, refilled from the schedule before each
    replay, so the graph follows the same schedule as ``resident``.
    """

    def __init__(self, config: RunConfig):
        super().__init__(config)
        # shakespeare_char's model is launch-bound (hundreds of small kernels an iteration); GPT-2 124M's is not.
        launch_bound = self.sizes.n_embd < 768
        self.plan_tuned(WorkloadTraits(has_convolutions=False, launch_bound=launch_bound, graph_safe_optimizer=True))
        unwrapped(self.model).use_fused_attention(True)
        self.add_tuning_note("attention: torch's scaled_dot_product_attention (fused kernels)")
        on_cuda = self.device.type == "cuda"
        if self.plan.cuda_graphs:
            self.lr_tensor = torch.tensor(LEARNING_RATE, device=self.device)
            self.optimizer = make_optimizer(self.model, lr=self.lr_tensor, fused=True, capturable=True)
        elif on_cuda:
            self.optimizer = make_optimizer(self.model, fused=True)
        self.fused_optimizer = on_cuda
        if on_cuda:
            self.add_tuning_note("optimizer: AdamW's fused kernel")
        self.mean_loss = self.compiled(lambda x, y: token_loss(self.model(x), y))
        self.sum_loss = self.compiled(lambda x, y: token_loss(self.model(x), y, reduction="sum"))
        self.graph = None
        self.prepare(self.model, self.optimizer, self._capture_or_compile_training, self._compile_validation)
        self.iteration = 0  # the steps prepare() ran are undone: the schedule starts where resident's does

    def describe(self) -> dict:
        return {**super().describe(), "fused_optimizer": self.fused_optimizer}

    def set_learning_rate(self) -> None:
        if not self.plan.cuda_graphs:
            return super().set_learning_rate()
        self.lr_tensor.fill_(learning_rate(self.iteration))  # the tensor the captured AdamW step reads
        self.iteration += 1

    def step_body(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            loss = self.mean_loss(x, y)
        if self.scaler is not None:  # float16 (mps on torch 2.5, Volta and Turing): nanoGPT's scaled step
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP, foreach=True)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRADIENT_CLIP, foreach=True)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.set_learning_rate()
        return self.step_body(x, y)

    def train_on_windows(self, windows: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            return super().train_on_windows(windows)
        self.set_learning_rate()
        self.static_windows.copy_(windows)
        self.graph.replay()
        return self.static_loss  # read by the next kernel in the stream, before the next replay rewrites it

    def valid_loss_sum(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.sum_loss(x, y)

    def _first_windows(self) -> torch.Tensor:
        index = window_index(torch.arange(self.config.scale.batch_size, device=self.device), self.sizes.block_size)
        return self.train_d[index]

    def _capture_or_compile_training(self) -> None:
        self.model.train()
        if not self.plan.cuda_graphs:
            if self.plan.compiled:
                windows = self._first_windows()
                self.step_body(windows[:, :-1], windows[:, 1:])
            return
        self.static_windows = self._first_windows().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP_STEPS):
                self.step_body(self.static_windows[:, :-1], self.static_windows[:, 1:])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = self.step_body(self.static_windows[:, :-1], self.static_windows[:, 1:])
        self.graph = graph

    def _compile_validation(self) -> None:
        if self.plan.compiled:
            self.model.eval()
            with torch.no_grad():
                windows = self.valid_d[self.valid_index[: self.config.scale.valid_batch_size]]
                self.valid_loss_sum(windows[:, :-1], windows[:, 1:])


# The pipelines this workload offers (base.WorkloadModule).
RUNS = {"seed": SeedRun, "resident": ResidentRun, "tuned": TunedRun}
