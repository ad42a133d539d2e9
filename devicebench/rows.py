"""Which rows a run has: every selected workload × device × pipeline, named as pytest names them.

A ``RowSpec`` is what the coordinator hands a worker for each row, and what the pytest front builds from its
parameters: the same name (``test_mnist_mlp[cpu-seed]``) whichever front measured it, so their files compare.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import torch

from devicebench.data import default_data_dir
from devicebench.errors import UsageError
from devicebench.options import RowOptions, slowdown_fraction
from devicebench.scales import ScaleNotOffered, scale_for
from devicebench.workloads import BUILT_IN, all_workloads
from devicebench.workloads.base import RunConfig, pipelines


@dataclass(frozen=True)
class RowSpec:
    workload: str
    module: str  # the workload's module, imported by the worker
    device: str
    pipeline: str

    @property
    def name(self) -> str:
        if self.workload in BUILT_IN:
            return f"test_{self.workload}[{self.device}-{self.pipeline}]"
        # as benchmarks/test_registered_workloads.py names its rows
        return f"test_workload[{self.workload}-{self.pipeline}-{self.device}]"

    @property
    def nodeid(self) -> str:
        """pytest's id of the row, run from the checkout: pytest-benchmark pairs saved rows by it."""
        if self.workload in BUILT_IN:
            return f"benchmarks/test_{self.workload}.py::{self.name}"
        return f"benchmarks/test_registered_workloads.py::{self.name}"

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def select(options: RowOptions, keyword: str | None = None, workloads: list[str] | None = None) -> list[RowSpec]:
    """The rows a run measures, in the order pytest runs them: workload by workload, device, then pipeline."""
    known = all_workloads()
    unknown = [name for name in workloads or [] if name not in known]
    if unknown:
        raise UsageError(f"--workload {','.join(unknown)}: unknown; known: {', '.join(known)}")
    matches = keyword_matcher(keyword)
    found = []
    for name, module in known.items():
        if workloads and name not in workloads:
            continue
        for device in options.devices:
            for pipeline in (p for p in options.pipelines if p in pipelines(module)):
                spec = RowSpec(name, module.__name__, device, pipeline)
                if matches(spec.name):
                    found.append(spec)
    return found


TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


def keyword_matcher(expression: str | None):
    """pytest's ``-k`` over row names: words (case-insensitive substrings) joined by and, or, not, parentheses."""
    if not expression or not expression.strip():
        return lambda name: True
    tokens = TOKEN.findall(expression)
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        if position >= len(tokens):
            raise UsageError(f"-k {expression!r}: the expression ends too early")
        position += 1
        return tokens[position - 1]

    def any_of():
        parts = [all_of()]
        while peek() == "or":
            take()
            parts.append(all_of())
        return lambda name: any(part(name) for part in parts)

    def all_of():
        parts = [negation()]
        while peek() == "and":
            take()
            parts.append(negation())
        return lambda name: all(part(name) for part in parts)

    def negation():
        if peek() == "not":
            take()
            inner = negation()
            return lambda name: not inner(name)
        token = take()
        if token == "(":
            inner = any_of()
            if take() != ")":
                raise UsageError(f"-k {expression!r}: a parenthesis is not closed")
            return inner
        if token in ("and", "or", ")"):
            raise UsageError(f"-k {expression!r}: unexpected {token!r}")
        word = token.lower()
        return lambda name: word in name.lower()

    matcher = any_of()
    if position != len(tokens):
        raise UsageError(f"-k {expression!r}: unexpected {tokens[position]!r}")
    return matcher


def run_config(spec: RowSpec, options: RowOptions, round_core: int | None = None,
               compile_cache: str | None = None, min_rounds: int | None = None) -> RunConfig:
    """The workload's build configuration for one row. ``min_rounds``: a front may ask for more timed rounds than
    the scale's, never fewer."""
    scale = scale_for(spec.workload, options.scale)
    if min_rounds is not None and min_rounds > scale.rounds:
        scale = replace(scale, rounds=min_rounds)
    return RunConfig(
        device=torch.device(spec.device), pipeline=spec.pipeline, scale=scale, data_mode=options.data,
        data_dir=Path(options.data_dir) if options.data_dir else default_data_dir(), workers=options.workers,
        optimizer=options.optimizer, pretrained=options.pretrained,
        weights_file=Path(options.weights) if options.weights else None, tuning=options.tuning(),
        compile_cache=compile_cache or options.compile_cache or "fresh",
        slowdown_fraction=slowdown_fraction(options.slowdown_fraction), round_core=round_core)


def skip_reason(module: ModuleType, device: str, scale_name: str) -> str | None:
    """Why a row of ``module`` cannot run here, else None: a package it needs does not import, it has no sizes
    for this scale, or the scale is too large for the cpu."""
    reason = missing_requirement(module)
    if reason is not None:
        return reason
    try:
        scale = scale_for(module.NAME, scale_name, module)
    except ScaleNotOffered as error:
        return str(error)
    if scale.needs_accelerator and device == "cpu":
        return f"{module.NAME} at --scale {scale_name} is sized for accelerators: the cpu would take hours"
    return None


def missing_requirement(module: ModuleType) -> str | None:
    """Why a workload cannot run with this torch (a package it needs does not import), else None.

    A torchvision built for another torch fails at import with a RuntimeError ("operator torchvision::nms does not
    exist"), not an ImportError, so any failure to import counts."""
    for package in getattr(module, "REQUIRES", ()):
        try:
            importlib.import_module(package)
        except Exception as error:  # noqa: BLE001 - any failure to import means the same thing here
            first = str(error).splitlines()[0] if str(error) else ""
            return (f"{module.NAME} needs {', '.join(module.REQUIRES)} matching this torch: {package}: "
                    f"{type(error).__name__}: {first}")
    return None
