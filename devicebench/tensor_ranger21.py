"""Ranger21's update as device tensor operations, for the ``tuned`` pipeline: no host read, no branch on a value.

``ranger21.Ranger21`` (0.1.0, the release the post installs) reads the device back to the host on every step: the
stable-weight-decay variance sum goes through ``math.sqrt`` and ``math.isnan``, and its schedule (step parity for
positive-negative momentum, lookahead every 5 steps, the warm-down) is Python arithmetic on Python counters. A
step that reads the device waits for it, so nothing can queue behind it, and no CUDA graph can hold it.

``TensorRanger21`` does the same arithmetic with every changing number on the device: the step count, the
learning rate and beta1 (which CyclicLR rewrites every epoch, in ``param_groups`` as for any optimizer), and
every schedule decision as ``torch.where`` on them. ``update()`` is then graph-safe (captured in the tuned
step's CUDA graph, traceable by torch.compile with ``fullgraph=True``); ``load_schedule()`` copies the param
groups' lr and beta1 to the device (a host-to-device write, never a read) and is called before each replay.
``step()`` does both, for eager use. tests/test_tensor_ranger21.py checks the parameters after 50 steps against
``ranger21.Ranger21`` itself.

Ranger21 0.1.0 as it runs, quirks included, because the benchmark's work must be the post's:
- the gradient is clipped (adaptive gradient clipping), centralized and normalized in place before the variance
  update, and centralized and normalized *again* before the momentum update;
- stable weight decay and norm loss are applied to the last parameter only (its second loop reuses the first
  loop's variable ``p``), once per parameter group; with ``weight_decay=0`` (the post) only norm loss remains;
- ``max_variance_ma`` is never updated (it stays zero), so ``max(max_variance_ma, variance_ma)`` is
  ``variance_ma`` and is left out here;
- the warm-down replaces the scheduler's learning rate once it starts (it counts from Ranger21's own ``lr``).

Only what the post's configuration reaches is implemented (AdamW core with positive-negative momentum, no warm-up,
no MADGRAD, no AdaBelief, no Chebyshev steps, one parameter group); asking for anything else raises, naming it.
Left out on purpose: the ``math.isnan`` check of the variance sum (a host read; a NaN shows in the row's loss) and
Ranger21's logging lists and printed banners.
"""

from __future__ import annotations

import math

import torch

# The keyword arguments of ranger21.Ranger21 that this class does not implement, with the only value it accepts.
FIXED_OPTIONS = {"use_madgrad": False, "use_adabelief": False, "use_cheb": False, "use_warmup": False,
                 "momentum_type": "pnm", "pnm_momentum_factor": 1.0, "decay_type": "stable",
                 "lookahead_load_at_validation": False, "gc_conv_only": False}


class TensorRanger21(torch.optim.Optimizer):
    def __init__(self, params, lr: float, num_epochs: int, num_batches_per_epoch: int, *,
                 lookahead_active=True, lookahead_mergetime=5, lookahead_blending_alpha=0.5,
                 softplus=True, beta_softplus=50, using_gc=True, using_normgc=True,
                 normloss_active=True, normloss_factor=1e-4,
                 use_adaptive_gradient_clipping=True, agc_clipping_value=1e-2, agc_eps=1e-3,
                 betas=(0.9, 0.999), momentum=0.9, eps=1e-8,
                 warmdown_active=True, warmdown_start_pct=0.72, warmdown_min_lr=3e-5,
                 weight_decay=1e-4, **fixed):
        for name, value in fixed.items():
            if name not in FIXED_OPTIONS:
                raise TypeError(f"TensorRanger21 got an unexpected keyword argument {name!r}")
            if value != FIXED_OPTIONS[name]:
                raise ValueError(f"TensorRanger21 implements Ranger21 with {name}={FIXED_OPTIONS[name]!r} only "
                                 f"(the post's configuration); use ranger21.Ranger21 for {name}={value!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay))
        if len(self.param_groups) != 1:
            raise ValueError("TensorRanger21 takes one parameter group, as the post builds it")
        self.lookahead_active, self.lookahead_mergetime = lookahead_active, lookahead_mergetime
        self.lookahead_alpha = lookahead_blending_alpha
        self.softplus, self.beta_softplus = softplus, beta_softplus
        self.use_gc, self.use_gcnorm = using_gc, using_normgc
        self.normloss_active, self.normloss_factor = normloss_active, normloss_factor
        self.agc_active, self.agc_clip_val, self.agc_eps = use_adaptive_gradient_clipping, agc_clipping_value, agc_eps
        self.eps = eps
        # The warm-down's constants, as Ranger21 computes them at construction.
        self.warmdown_active = warmdown_active
        self.starting_lr, self.min_lr = lr, warmdown_min_lr
        total_iterations = num_epochs * num_batches_per_epoch
        if not total_iterations:
            raise ValueError("missing total iterations, which is calced from num epochs and num iters per epoch")
        self.start_warm_down = int(warmdown_start_pct * num_epochs * num_batches_per_epoch)
        self.warmdown_total_iterations = total_iterations - self.start_warm_down

        params = self.param_groups[0]["params"]
        device = params[0].device
        # Everything that changes between steps, on the device, in schedule_dtype(device).
        dtype = schedule_dtype(device)
        self.step_count = torch.zeros((), dtype=dtype, device=device)
        self.group_lr = torch.zeros((), dtype=dtype, device=device)
        self.beta1 = torch.zeros((), dtype=dtype, device=device)
        self._loaded = None  # the (lr, beta1) last copied to the device
        for p in params:
            self.state[p] = {"grad_ma": torch.zeros_like(p), "neg_grad_ma": torch.zeros_like(p),
                             "variance_ma": torch.zeros_like(p)}
            if self.lookahead_active:
                self.state[p]["lookahead_params"] = p.detach().clone()
        self.param_size = sum(p.numel() for p in params)

    @torch.no_grad()
    def reset_state(self) -> None:
        """Back to a fresh optimizer, in place (a captured graph holds these tensors): moments and the step count
        zero, the lookahead cache a copy of the parameters as they are now."""
        self.step_count.zero_()
        for p, state in self.state.items():
            for name, tensor in state.items():
                if name == "lookahead_params":
                    tensor.copy_(p)
                else:
                    tensor.zero_()

    def load_schedule(self) -> None:
        """Copy the param group's lr and beta1 (what a scheduler sets) to the device, if they changed."""
        group = self.param_groups[0]
        wanted = (float(group["lr"]), float(group["betas"][0]))
        if wanted != self._loaded:
            self.group_lr.fill_(wanted[0])
            self.beta1.fill_(wanted[1])
            self._loaded = wanted

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.load_schedule()
        self.update()
        return loss

    @torch.no_grad()
    def update(self) -> None:
        """One Ranger21 step from the device's schedule tensors: nothing here reads a value to the host."""
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        beta2 = group["betas"][1]
        self.step_count += 1
        t = self.step_count
        bias_correction2 = 1 - beta2 ** t

        # Phase 1: clip, centralize and normalize each gradient (in place, as Ranger21 does), update the variance
        # and sum its debiased values for stable weight decay.
        variance_ma_sum = None
        for p in params:
            grad = p.grad
            if self.agc_active:
                grad.copy_(self._agc(p, grad))
            self._centralize_and_normalize(grad)
            variance_ma = self.state[p]["variance_ma"]
            variance_ma.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            debiased_sum = (variance_ma / bias_correction2.float()).sum()
            variance_ma_sum = debiased_sum if variance_ma_sum is None else variance_ma_sum + debiased_sum

        lr = self._learning_rate(t)
        # Stable weight decay and norm loss: Ranger21 applies them to the last parameter of its first loop only.
        last = group["params"][-1]
        if group["weight_decay"]:
            # Ranger21 divides the float32 sum, then takes math.sqrt of it as a double.
            variance_normalized = torch.sqrt((variance_ma_sum / self.param_size).double())
            last.mul_((1 - group["weight_decay"] * lr / variance_normalized).float())
        if self.normloss_active:
            unorm = unit_norm(last)
            correction = 2 * self.normloss_factor * (1 - torch.div(1, unorm + self.eps))
            last.mul_(1 - lr.float() * correction)

        # Phase 2: positive-negative momentum (the two moving averages swap roles on odd and even steps) and the
        # AdamW-style update.
        beta1 = self.beta1
        odd = torch.remainder(t, 2) == 1
        bias_correction1 = 1 - beta1 ** t
        noise_norm = math.sqrt((1 + beta2) ** 2 + beta2 ** 2)
        step_size = (lr / bias_correction1).float()
        momentum_keep, momentum_new = (beta1 ** 2).float(), (1 - beta1 ** 2).float()
        sqrt_bias_correction2 = torch.sqrt(bias_correction2).float()
        for p in params:
            state = self.state[p]
            denom = (state["variance_ma"].sqrt() / sqrt_bias_correction2).add_(group["eps"])
            grad = self._centralize_and_normalize(p.grad)  # a second time, as Ranger21 does
            this, other = (torch.where(odd, state["grad_ma"], state["neg_grad_ma"]),
                           torch.where(odd, state["neg_grad_ma"], state["grad_ma"]))
            this = this.mul(momentum_keep).add_(grad * momentum_new)
            state["grad_ma"].copy_(torch.where(odd, this, state["grad_ma"]))
            state["neg_grad_ma"].copy_(torch.where(odd, state["neg_grad_ma"], this))
            if self.softplus:
                denom = torch.nn.functional.softplus(denom, beta=self.beta_softplus)
            pnmomentum = this.mul(2).add(other, alpha=-1).mul(1 / noise_norm)
            p.add_(pnmomentum * -step_size / denom)

        if self.lookahead_active:  # blend with the cached parameters every lookahead_mergetime steps
            merge = torch.remainder(t, self.lookahead_mergetime) == 0
            for p in params:
                cached = self.state[p]["lookahead_params"]
                blended = p.mul(self.lookahead_alpha).add(cached, alpha=1.0 - self.lookahead_alpha)
                p.copy_(torch.where(merge, blended, p))
                cached.copy_(torch.where(merge, p, cached))

    def _learning_rate(self, t: torch.Tensor) -> torch.Tensor:
        """The group's lr, replaced by Ranger21's linear warm-down from its ``start_warm_down``-th step on."""
        if not self.warmdown_active:
            return self.group_lr
        warmdown_iteration = t + 1 - self.start_warm_down
        warmdown_pct = torch.clamp(warmdown_iteration / (self.warmdown_total_iterations + 1), max=1.0)
        warmed_down = torch.clamp(self.starting_lr - (self.starting_lr - self.min_lr) * warmdown_pct,
                                  min=self.min_lr)
        return torch.where(t < self.start_warm_down, self.group_lr, warmed_down)

    def _agc(self, p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Adaptive gradient clipping: scale the gradient down where its unit-wise norm exceeds the parameter's."""
        max_norm = unit_norm(p).clamp_(self.agc_eps) * self.agc_clip_val
        grad_norm = unit_norm(grad)
        clipped = grad * (max_norm / grad_norm.clamp(min=1e-6))
        return torch.where(grad_norm > max_norm, clipped, grad)

    def _centralize_and_normalize(self, grad: torch.Tensor) -> torch.Tensor:
        """Ranger21's ``centralize_gradient`` and ``normalize_gradient`` (defaults), in place on ``grad``."""
        if self.use_gc and grad.dim() > 1:
            grad.add_(-grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
        if self.use_gcnorm and grad.numel() > 2:
            grad.div_(grad.std() + 1e-8)
        return grad


def schedule_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it: Ranger21 does its schedule arithmetic in Python floats (doubles) and rounds
    to float32 only where a number meets a tensor, and so is it done here (1 - 0.999 ** 1 in float32 is 1.3e-5 off).
    mps has no float64, so there the schedule is float32, that far from Ranger21's."""
    return torch.float32 if device.type == "mps" else torch.float64


def unit_norm(x: torch.Tensor) -> torch.Tensor:
    """Ranger21's axis-based Euclidean norm: per output unit for matrices and convolution kernels."""
    if x.dim() <= 1:
        return x.norm(p=2.0)
    return x.norm(dim=tuple(range(1, x.dim())), keepdim=True, p=2.0)
