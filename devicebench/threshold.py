"""The size of change a comparison asks about: ``--threshold`` of the gates, ``--until`` of a run of worker pairs."""

from __future__ import annotations

from dataclasses import dataclass

from devicebench.errors import UsageError

DEFAULT_THRESHOLD = 0.05


def percent(size: float) -> str:
    """A size as it is typed: 5%, 2.5%, 0.4% (never rounded into another size, such as 0%)."""
    return f"{round(size * 100, 3):g}%"


@dataclass(frozen=True)
class Threshold:
    """``--threshold`` (and ``--until``): a size for every row, or for one pipeline's rows (``seed=10%``).

    Why per pipeline. The ``seed`` rows run the posts' CPU data loaders, whose rounds swing with the host (H200 host,
    A/A: a B round against the A round beside it, 15-18% standard deviation for mnist_mlp seed, 0.7-1.3% for
    resnet18_cifar resident and tuned); one size for all would spend a run's whole budget on the seed rows, or ask
    too little of the others, and a gate must judge each row at the size its run was sized for."""

    default: float
    by_pipeline: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, value: float | Threshold) -> Threshold:
        return value if isinstance(value, Threshold) else cls(float(value))

    def for_pipeline(self, pipeline: str | None) -> float:
        return dict(self.by_pipeline).get(pipeline, self.default)

    def describe(self) -> str:
        extra = ", ".join(f"{pipeline} {percent(size)}" for pipeline, size in self.by_pipeline)
        return percent(self.default) + (f" ({extra})" if extra else "")

    def option(self, name: str) -> str:
        """As options on a command line: ``--until 5% --until seed=10%``."""
        return " ".join([f"{name} {percent(self.default)}", *(f"{name} {pipeline}={percent(size)}"
                                                             for pipeline, size in self.by_pipeline)])

    @classmethod
    def from_parts(cls, parts: list[tuple[str | None, float]] | None, option: str) -> Threshold | None:
        """Repeated ``option`` values, as (pipeline or None, size), as one: None when none was given."""
        if not parts:
            return None
        defaults = [value for pipeline, value in parts if pipeline is None]
        if len(defaults) > 1 or (not defaults and option == "--until"):
            given = (f"{', '.join(map(percent, defaults))} are all sizes for every row" if defaults else
                     "no size for every row")
            raise UsageError(f"{option}: {given}; give one size for every row (e.g. {option} 5%), and PIPELINE=SIZE "
                             f"for a pipeline that should differ (e.g. {option} seed=10%)")
        named = [pipeline for pipeline, _ in parts if pipeline is not None]
        if len(named) != len(set(named)):
            raise UsageError(f"{option}: {', '.join(sorted({p for p in named if named.count(p) > 1}))} given more "
                             f"than one size; give each pipeline one (e.g. {option} seed=10%)")
        by_pipeline = {pipeline: value for pipeline, value in parts if pipeline is not None}
        return cls(defaults[0] if defaults else DEFAULT_THRESHOLD, tuple(sorted(by_pipeline.items())))
