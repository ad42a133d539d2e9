"""The options that say which rows to run and how: one table, read by ``pytest benchmarks`` and ``devicebench run``.

Both fronts declare these from ``OPTIONS`` (pytest's ``addoption`` takes argparse's arguments), so a name means
the same thing in both, and a run's choices travel to its workers as one ``RowOptions`` value, never as a command
line to parse back.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from devicebench import devices
from devicebench.data import DATA_MODES
from devicebench.errors import UsageError
from devicebench.scales import DEFAULT_SCALE, SCALES
from devicebench.tuning import DTYPES, TuningOptions
from devicebench.weights import PRETRAINED_MODES
from devicebench.workloads.base import PIPELINES
from devicebench.workloads.resnet18_cifar import OPTIMIZERS

# What the tuned pipeline can be told not to use (--tuned-off), each a TuningOptions field.
TUNED_PARTS = {"channels-last": "channels_last", "compile": "compile", "cuda-graphs": "cuda_graphs",
               "cudnn-benchmark": "cudnn_benchmark"}
# fresh: this process compiles from an empty torch.compile cache; shared: the user's cache. (A worker of
# `devicebench run` may also be handed its environment's kept code: compile_cache.py.)
COMPILE_CACHES = ("fresh", "shared")
SLOWDOWN_VARIABLE = "DEVICEBENCH_SLOWDOWN_FRACTION"


@dataclass(frozen=True)
class Option:
    flag: str
    help: str
    default: Any = None
    choices: tuple | None = None
    type: Callable | None = None
    flag_only: bool = False  # a switch: present or not

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def arguments(self) -> dict:
        if self.flag_only:
            return {"action": "store_true", "help": self.help}
        found = {"default": self.default, "help": self.help}
        if self.choices:
            found["choices"] = self.choices
        if self.type:
            found["type"] = self.type
        return found


OPTIONS = (
    Option("--device", "comma-separated devices, of cpu,mps,cuda (default: all; absent ones skip, saying why)",
           ",".join(devices.KNOWN_DEVICES)),
    Option("--pipeline", f"comma-separated pipelines, of {','.join(PIPELINES)} (default: all)", ",".join(PIPELINES)),
    Option("--scale", "work per round: quick (tests, CI), standard (default), full (the posts), gpt2 (char_gpt "
                      "at GPT-2 124M, accelerators only)", DEFAULT_SCALE,
           SCALES),
    Option("--data", "real: download and verify the data sets; synthetic: generated data of the same shapes; auto "
                     "(default): real if it can be had, else synthetic", "auto", DATA_MODES),
    Option("--data-dir", "where data sets are cached (default: $DEVICEBENCH_DATA_DIR, else the user cache dir)"),
    Option("--workers", "DataLoader workers of the resnet18_cifar seed pipeline (default 0, as in the post)", 0,
           type=int),
    Option("--optimizer", "resnet18_cifar optimizer (default ranger21, the post's choice)", "ranger21", OPTIMIZERS),
    Option("--pretrained", "resnet18 ImageNet weights: yes, no, or auto (default: if cached or downloadable)",
           "auto", PRETRAINED_MODES),
    Option("--weights", "a local resnet18 weights file (.safetensors or .pth)"),
    Option("--tuned-dtype", "tuned pipeline autocast dtype (default auto: what the device does fast; float32 = off)",
           "auto", DTYPES),
    Option("--tuned-off", f"what the tuned pipeline must not use, a comma list of {','.join(TUNED_PARTS)}", ""),
    Option("--profile", "after each row's timed rounds, one more untimed round under torch.profiler: the row gets "
                        "where its time went, and its trace goes to --profile-dir", flag_only=True),
    Option("--profile-dir", "where --profile writes traces (default: beside the results, else results/profiles)"),
    Option("--slowdown-fraction", "plant a slowdown to check what a comparison detects: each training epoch and "
                                  "validation pass made this fraction longer, on the device (e.g. 0.05). Default: "
                                  f"${SLOWDOWN_VARIABLE}, else 0", type=float),
    Option("--compile-cache", "fresh (default): compile from an empty torch.compile cache, so every process times "
                              "the same code; shared: reuse the user's cache (faster start). devicebench run keeps "
                              "an environment's compiled code for its later workers on the cpu alone unless given",
           None, COMPILE_CACHES),
    Option("--no-parity-check", "skip the check before an accelerator's first row of each workload (a few training "
                                "steps on the device against the cpu)", flag_only=True),
)


def add_options(add: Callable[..., Any]) -> None:
    """Declare every option with ``add`` (argparse's ``add_argument`` or pytest's ``addoption``)."""
    for option in OPTIONS:
        add(option.flag, **option.arguments())


@dataclass(frozen=True)
class RowOptions:
    """How every selected row runs: the options above, checked, as plain values a worker task can carry."""

    devices: tuple[str, ...] = devices.KNOWN_DEVICES
    pipelines: tuple[str, ...] = PIPELINES
    scale: str = DEFAULT_SCALE
    data: str = "auto"
    data_dir: str | None = None
    workers: int = 0
    optimizer: str = "ranger21"
    pretrained: str = "auto"
    weights: str | None = None
    tuned_dtype: str = "auto"
    tuned_off: tuple[str, ...] = ()
    profile: bool = False
    profile_dir: str | None = None
    # None: not given, so each process that measures reads $DEVICEBENCH_SLOWDOWN_FRACTION itself; that is how one
    # environment of an A/B (a wrapper that sets it) carries a planted slowdown the other does not.
    slowdown_fraction: float | None = None
    compile_cache: str | None = None  # None: not given (a plain run compiles fresh; compile_cache.py)
    parity_check: bool = True

    @classmethod
    def read(cls, get: Callable[[str], Any]) -> "RowOptions":
        """From the parsed options, by dest name (``vars(namespace).get`` or pytest's ``config.getoption``);
        UsageError naming the option and the fix when a value is wrong."""
        workers = get("workers")
        if workers < 0:
            raise UsageError(f"--workers {workers}: give 0 or more")
        weights = get("weights")
        if weights is not None and not Path(weights).is_file():
            raise UsageError(f"--weights {weights}: no such file")
        return cls(devices=tuple(devices.parse_device_list(get("device"))),
                   pipelines=tuple(devices.parse_choices("pipeline", get("pipeline"), PIPELINES, "pipeline")),
                   scale=get("scale"), data=get("data"), data_dir=get("data_dir"), workers=workers,
                   optimizer=get("optimizer"), pretrained=get("pretrained"), weights=weights,
                   tuned_dtype=get("tuned_dtype"), tuned_off=parse_tuned_off(get("tuned_off")),
                   profile=bool(get("profile")), profile_dir=get("profile_dir"),
                   slowdown_fraction=checked_fraction(get("slowdown_fraction")),
                   compile_cache=get("compile_cache"), parity_check=not get("no_parity_check"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "RowOptions":
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    def tuning(self) -> TuningOptions:
        off = {TUNED_PARTS[part]: False for part in self.tuned_off}
        return TuningOptions(dtype=self.tuned_dtype, **off)


def parse_tuned_off(text: str | None) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    unknown = [part for part in parts if part not in TUNED_PARTS]
    if unknown:
        raise UsageError(f"--tuned-off {text}: unknown {', '.join(unknown)}; choose from {', '.join(TUNED_PARTS)}")
    return parts


def checked_fraction(value: float | None) -> float | None:
    """--slowdown-fraction as given (None when not given, read later where the rows run), checked now, and
    $DEVICEBENCH_SLOWDOWN_FRACTION of this process checked too, so a mistyped value fails before anything runs."""
    slowdown_fraction(None)
    return None if value is None else slowdown_fraction(value)


def slowdown_fraction(value: float | None) -> float:
    """--slowdown-fraction, else $DEVICEBENCH_SLOWDOWN_FRACTION of the process that measures (so that one
    environment of an A/B can carry it), else 0; refused outside [0, 1)."""
    source = "--slowdown-fraction"
    if value is None:
        text, source = os.environ.get(SLOWDOWN_VARIABLE, "0"), SLOWDOWN_VARIABLE
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{SLOWDOWN_VARIABLE}={text!r}: give a fraction such as 0.05") from None
    if not 0 <= value < 1:
        raise UsageError(f"{source} {value}: give a fraction from 0 up to 1, e.g. 0.05 for 5%")
    return value
