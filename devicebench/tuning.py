"""What the ``tuned`` pipeline may use on each backend: a capability table, not try/except around everything.

``plan_tuning`` turns (backend facts, workload traits, user options) into a ``TuningPlan``: the dtype for autocast,
channels_last, torch.compile, CUDA graphs, and for each feature left off the reason why. Every choice is recorded
in the result (``dtype``, ``channels_last``, ``compiled``, ``cuda_graphs``, ``tuning_notes``), and each can be
switched off by an option (``--tuned-dtype float32``, ``--tuned-off channels-last,compile,cuda-graphs,
cudnn-benchmark``) so a user can see what it buys.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field

import torch

from devicebench.errors import UsageError

DTYPES = ("auto", "float32", "bfloat16", "float16")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TuningOptions:
    """What the user allows the ``tuned`` pipeline to use; each can be switched off to see what it buys."""

    dtype: str = "auto"
    channels_last: bool = True
    compile: bool = True
    cuda_graphs: bool = True
    cudnn_benchmark: bool = True

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UsageError(f"--tuned-dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class BackendFacts:
    """The facts about this machine that decide capabilities (gathered by ``backend_facts``, faked in tests)."""

    device_type: str
    torch_version: tuple[int, int]
    cuda_capability: tuple[int, int] | None = None
    has_triton: bool = False
    has_cxx_compiler: bool = False


@dataclass(frozen=True)
class WorkloadTraits:
    """What about a workload decides which features apply."""

    has_convolutions: bool  # channels_last only helps convolutions
    launch_bound: bool  # many tiny kernels per step: CUDA graphs remove the launch overhead
    # The optimizer step never reads values back to the host and keeps its schedule on the device (capturable).
    graph_safe_optimizer: bool
    # The optimizer's step is many small kernels (Ranger21: ~70 a step), which a graph launches as one even where
    # the rest of the step is compute-bound.
    small_kernel_optimizer: bool = False


@dataclass(frozen=True)
class TuningPlan:
    dtype: str
    channels_last: bool
    compiled: bool
    cuda_graphs: bool
    cudnn_benchmark: bool = False  # cuDNN autotunes each convolution's algorithm on first use
    # torch.compile with no kernel picked by timing (FIXED_CHOICE_OPTIONS): for launch-bound workloads, whose
    # kernels are too small for timing to tell their candidates apart.
    fixed_kernel_choices: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)  # why each feature that is off is off

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return None if self.dtype == "float32" else TORCH_DTYPES[self.dtype]

    @property
    def needs_grad_scaler(self) -> bool:
        # float16 has too little range for small gradients; bfloat16 has float32's range and needs no scaler.
        return self.dtype == "float16"

    def compile_options(self) -> dict[str, bool]:
        """The inductor options this plan compiles with (beyond static shapes and CUDA graphs)."""
        return fixed_choice_options() if self.compiled and self.fixed_kernel_choices else {}

    def as_extra_info(self) -> dict:
        info = {"dtype": self.dtype, "channels_last": self.channels_last, "compiled": self.compiled,
                "cuda_graphs": self.cuda_graphs, "tuning_notes": list(self.notes)}
        if self.compiled:
            info["compile_options"] = self.compile_options()
        return info


# ---------------------------------------------------------------------------------------------------------------
# The capability table. Each entry: the condition under which a backend has the feature, and what to say if not.
#
# Mixed precision (autocast):
#   cuda  bfloat16 from compute capability 8.0 (Ampere: tensor cores with bf16); float16 from 7.0 (Volta tensor
#         cores); below that (Pascal, e.g. GTX 1060 = sm_61) float16 runs at 1/64 of float32 rate: keep float32.
#   mps   autocast on mps exists from torch 2.5 (float16); bfloat16 from torch 2.6.
#   cpu   keeps float32 unless asked: bf16 is only fast on CPUs with AMX / AVX512-BF16, and slower elsewhere.
# torch.compile:
#   cuda  inductor generates Triton kernels: needs triton and compute capability >= 7.0.
#   cpu   inductor generates C++: needs a C++ compiler on PATH.
#   mps   not used: inductor's Metal backend is still maturing and these models have not been verified on it
#         (docs/mps.md says what was not run).
# CUDA graphs: cuda only. The whole step, for workloads whose step is launch-bound (or whose optimizer is many
#   small kernels) and whose optimizer is capturable, and not with float16, whose GradScaler reads the inf check
#   back to the host every step.
CUDA_BF16_MIN_CAPABILITY = (8, 0)
CUDA_FP16_MIN_CAPABILITY = (7, 0)
CUDA_TRITON_MIN_CAPABILITY = (7, 0)
MPS_FP16_AUTOCAST_MIN_TORCH = (2, 5)
MPS_BF16_AUTOCAST_MIN_TORCH = (2, 6)


def _supported_dtypes(facts: BackendFacts) -> dict[str, str | None]:
    """dtype -> None if usable, else why not."""
    blockers: dict[str, str | None] = {"float32": None}
    if facts.device_type == "cuda":
        cap = facts.cuda_capability or (0, 0)
        blockers["bfloat16"] = None if cap >= CUDA_BF16_MIN_CAPABILITY else \
            f"bfloat16 needs compute capability >= 8.0 (this GPU: {cap[0]}.{cap[1]})"
        blockers["float16"] = None if cap >= CUDA_FP16_MIN_CAPABILITY else \
            f"float16 is slow below compute capability 7.0 (this GPU: {cap[0]}.{cap[1]}, no tensor cores)"
    elif facts.device_type == "mps":
        version = ".".join(map(str, facts.torch_version))
        blockers["bfloat16"] = None if facts.torch_version >= MPS_BF16_AUTOCAST_MIN_TORCH else \
            f"bfloat16 autocast on mps needs torch >= 2.6 (this: {version})"
        blockers["float16"] = None if facts.torch_version >= MPS_FP16_AUTOCAST_MIN_TORCH else \
            f"autocast on mps needs torch >= 2.5 (this: {version})"
    else:
        blockers["bfloat16"] = None
        blockers["float16"] = None
    return blockers


def _auto_dtype(facts: BackendFacts, usable: dict[str, str | None]) -> tuple[str, str | None]:
    if facts.device_type == "cpu":
        return "float32", "cpu keeps float32 unless asked (--tuned-dtype bfloat16)"
    for dtype in ("bfloat16", "float16"):
        if usable[dtype] is None:
            return dtype, None
    return "float32", usable["bfloat16"] if facts.device_type == "mps" else usable["float16"]


def _compile_blocker(facts: BackendFacts) -> str | None:
    if facts.device_type == "cuda":
        if not facts.has_triton:
            return "torch.compile on cuda needs triton, which is not installed"
        if (facts.cuda_capability or (0, 0)) < CUDA_TRITON_MIN_CAPABILITY:
            return "torch.compile on cuda needs compute capability >= 7.0 (triton)"
        return None
    if facts.device_type == "cpu":
        return None if facts.has_cxx_compiler else "torch.compile on cpu needs a C++ compiler on PATH"
    return "torch.compile is not used on mps: not verified for these models by this project"


def _first_blocker(*checks: tuple[bool, str]) -> str | None:
    """The reason of the first (condition, reason) whose condition holds: what keeps a feature off."""
    return next((reason for blocked, reason in checks if blocked), None)


def plan_tuning(facts: BackendFacts, traits: WorkloadTraits, options: TuningOptions) -> TuningPlan:
    notes: list[str] = []
    usable = _supported_dtypes(facts)
    if options.dtype == "auto":
        dtype, why = _auto_dtype(facts, usable)
        if why:
            notes.append(f"float32: {why}")
    else:
        dtype = options.dtype
        if usable[dtype] is not None:
            raise UsageError(f"--tuned-dtype {dtype} on {facts.device_type}: {usable[dtype]}; "
                             f"use --tuned-dtype auto or float32")
        if dtype == "float32":
            notes.append("float32: switched off by --tuned-dtype float32")

    channels_last = options.channels_last and traits.has_convolutions
    if not traits.has_convolutions:
        notes.append("channels_last: no convolutions in this model")
    elif not options.channels_last:
        notes.append("channels_last: switched off by --tuned-off channels-last")

    compile_blocker = None if options.compile else "switched off by --tuned-off compile"
    compile_blocker = compile_blocker or _compile_blocker(facts)
    if compile_blocker:
        notes.append(f"compile: {compile_blocker}")

    # A graph holds the whole training step.
    graphs_blocker = _first_blocker(
        (facts.device_type != "cuda", "CUDA graphs exist on cuda only"),
        (not (traits.launch_bound or traits.small_kernel_optimizer),
         "not used: this workload is compute-bound, launch overhead is small"),
        (not traits.graph_safe_optimizer,
         "the optimizer reads values back to the host or keeps its schedule in host numbers, which a graph "
         "would freeze"),
        (dtype == "float16", "float16 needs a GradScaler, whose inf check syncs every step"),
        (not options.cuda_graphs, "switched off by --tuned-off cuda-graphs"))
    if graphs_blocker:
        notes.append(f"cuda_graphs: {graphs_blocker}")

    cudnn_blocker = _first_blocker(
        (facts.device_type != "cuda", "cuDNN autotuning exists on cuda only"),
        (not traits.has_convolutions, "no convolutions in this model"),
        (not options.cudnn_benchmark, "switched off by --tuned-off cudnn-benchmark"))
    if cudnn_blocker:
        notes.append(f"cudnn_benchmark: {cudnn_blocker}")

    fixed_kernel_choices = compile_blocker is None and traits.launch_bound
    if compile_blocker is None and not fixed_kernel_choices:
        notes.append("compile: kernels picked by timing (inductor autotuning) are kept for this compute-bound "
                     "workload: fixed choices were not shown to help it (tuning.FIXED_CHOICE_OPTIONS)")

    return TuningPlan(dtype=dtype, channels_last=channels_last, compiled=compile_blocker is None,
                      cuda_graphs=graphs_blocker is None, cudnn_benchmark=cudnn_blocker is None,
                      fixed_kernel_choices=fixed_kernel_choices, notes=tuple(notes))


def apply_backend_flags(plan: TuningPlan | None) -> None:
    """Set the backend flags a pipeline runs with: the tuned plan's, or torch's defaults for seed and resident
    (the posts enable no cuDNN autotuning). Called where each benchmark starts, before anything is built."""
    torch.backends.cudnn.benchmark = plan is not None and plan.cudnn_benchmark


def backend_facts(device: torch.device) -> BackendFacts:
    """Read the facts the capability table needs from this machine."""
    major, minor = (int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    has_triton = importlib.util.find_spec("triton") is not None
    has_cxx = any(shutil.which(name) for name in ("c++", "g++", "clang++"))
    return BackendFacts(device.type, (major, minor), capability, has_triton, has_cxx)


# Inductor settings that keep it from choosing code by timing candidates on the device. By default it times
# several launch configurations of each Triton kernel (and padded against unpadded matrix products) once per
# process and keeps the fastest; for kernels of 1-2 us the timing noise decides, so processes of the same code ran
# different kernels, some several times slower. ``deterministic`` fixes the reduction configurations and turns off
# padding benchmarks; ``triton.autotune_pointwise`` off keeps one configuration for elementwise kernels.
# Used for launch-bound workloads only (TuningPlan.fixed_kernel_choices): fixed choices were not shown to help
# ResNet18 (large BatchNorm reductions), so it keeps timed ones. cuDNN's algorithm search (``cudnn_benchmark``)
# also times; both are recorded in the row. (Measured: docs/comparing.md.)
FIXED_CHOICE_OPTIONS = {"deterministic": True, "triton.autotune_pointwise": False}


def build_chooses_by_timing(extra: dict) -> bool:
    """Whether a measured row's build picked code by timing candidates on the device, read from what the row
    recorded: cuDNN's algorithm search, or a compile without every one of FIXED_CHOICE_OPTIONS. A build that picked
    nothing so makes the same code in any process, busy machine or not, so workers may build it side by side
    (interleave.py, "Building side by side")."""
    if extra.get("cudnn_benchmark"):
        return True
    options = extra.get("compile_options") or {}
    return bool(extra.get("compiled")) and any(options.get(name) != value
                                               for name, value in FIXED_CHOICE_OPTIONS.items())


def fixed_choice_options() -> dict[str, bool]:
    """``FIXED_CHOICE_OPTIONS`` that this torch's inductor has (older releases lack ``deterministic``)."""
    from torch._inductor import config as inductor_config

    def known(name: str) -> bool:
        holder = inductor_config
        for part in name.split("."):
            if not hasattr(holder, part):
                return False
            holder = getattr(holder, part)
        return True

    return {name: value for name, value in FIXED_CHOICE_OPTIONS.items() if known(name)}


def compile_static(fn, options: dict | None = None):
    """``torch.compile`` with static shapes only, and the inductor ``options`` given (a plan's compile_options).

    A round's shapes are fixed by the scale, so nothing needs dynamic shapes; left on, automatic dynamic shapes
    (and their cache shared between processes) let one run compile other kernels than the next, and two runs of
    the same code disagreed by up to 3x on a 2-core CPU. Static compilation keeps the compiled code a function of
    the shapes alone. CUDA graphs are captured by the workloads themselves (the whole step, torch.cuda.graphs'
    recipe), not through torch.compile's reduce-overhead mode.
    """
    return torch.compile(fn, dynamic=False, options=options or {})


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None) -> None:
    """Backward and optimizer step, through the GradScaler when float16 needs one."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
