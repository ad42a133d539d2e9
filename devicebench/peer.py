"""``devicebench peer``: the tuned ResNet18 row beside timm's own benchmark of the same network, on the same GPU.

A user who reads "tuned" takes it as what the device can do; the yardstick is the best public implementation of
the same network measured in the same call: timm's ``benchmark.py`` (huggingface/pytorch-image-models), an
inference benchmark of resnet18 at the suite's image size, batch and 10 classes, mixed precision, channels_last,
torch.compile. Its forward is a lower bound on our training step's time (the step also runs BatchNorm in train
mode, the head's backward and Ranger21), so ``ratio`` = ours / theirs is at most about 1.

The two run as separate processes, alternated timm, suite, suite, timm, ... (``--processes`` of each), so the
machine's drift over the call falls on both; each side's figure is the median of its processes. With ``--profile``
one more suite process runs under torch.profiler, and the peer file keeps its breakdown (where the remaining time
goes). The script is the user's copy (``--script``): this project neither ships nor imports it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from devicebench import runfile, worker
from devicebench.errors import DevicebenchError, UsageError
from devicebench.scales import scale_for

WORKLOAD, PIPELINE = "resnet18_cifar", "tuned"
RESULT_MARKER = "--result\n"  # timm's benchmark.py prints its JSON summary after this line


def timm_command(script: Path, batch_size: int, image_size: int, amp_dtype: str, device: str) -> list[str]:
    """timm's inference benchmark with the tuned row's configuration."""
    return [sys.executable, str(script), "--model", "resnet18", "--bench", "inference", "--img-size",
            str(image_size), "-b", str(batch_size), "--num-classes", "10", "--amp", "--amp-dtype", amp_dtype,
            "--channels-last", "--torchcompile", "--device", device]


def suite_command(json_path: Path, device: str, scale: str, profile: bool) -> list[str]:
    """A worker of this Python measuring the tuned row alone into ``json_path`` (worker.py)."""
    from devicebench.options import RowOptions
    from devicebench.rows import RowSpec

    row = RowSpec(WORKLOAD, f"devicebench.workloads.{WORKLOAD}", device, PIPELINE)
    chosen = RowOptions(devices=(device,), pipelines=(PIPELINE,), scale=scale, profile=profile,
                        profile_dir=str(json_path.parent))
    task = worker.Task(rows=[vars(row)], options=chosen.to_dict(), output=str(json_path))
    return worker.command(sys.executable, task.write(json_path.with_suffix(".task.json")))


def parse_timm_output(output: str) -> dict:
    """The JSON summary timm's benchmark.py prints last; a clear error when it printed none."""
    if RESULT_MARKER not in output:
        raise DevicebenchError("timm's benchmark printed no '--result' summary; its output ended:\n"
                               + "\n".join(output.strip().splitlines()[-8:]))
    summary = json.loads(output.rsplit(RESULT_MARKER, 1)[1])
    if "infer_samples_per_sec" not in summary:
        raise DevicebenchError(f"timm's benchmark summary has no infer_samples_per_sec: {sorted(summary)}")
    return summary


def tuned_row(json_path: Path) -> dict:
    """The tuned resnet18_cifar row of a worker's file (its fields); the reason where it was not measured."""
    data = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    for row in data["rows"]:
        if row["status"] == "measured" and row["extra"].get("workload") == WORKLOAD:
            return row["extra"]
        raise DevicebenchError(f"{WORKLOAD} {PIPELINE} was not measured: {row['status']}: {row.get('reason')}")
    raise DevicebenchError(f"{json_path} holds no {WORKLOAD} {PIPELINE} row")


def run_peer(script: Path, output: Path, processes_each: int, device: str, scale_name: str, amp_dtype: str,
             profile: bool, echo: Callable[[str], None] = print,
             run: Callable[[list[str]], subprocess.CompletedProcess] | None = None) -> dict:
    """Alternate timm's benchmark and the suite's tuned row, write the peer file, return what it holds."""
    script = Path(script).resolve()
    if not script.is_file():
        raise UsageError(f"--script {script}: no such file; give the path of timm's benchmark.py "
                         f"(huggingface/pytorch-image-models)")
    if processes_each < 1:
        raise UsageError("--processes must be at least 1")
    run = run or (lambda argv: subprocess.run(argv, capture_output=True, text=True))
    scale = scale_for(WORKLOAD, scale_name)
    from devicebench.workloads.resnet18_cifar import IMAGE_SIZE

    timm_argv = timm_command(script, scale.batch_size, IMAGE_SIZE, amp_dtype, device)
    timm_figures, suite_figures, rows = [], [], []
    order = [side for index in range(processes_each) for side in (("timm", "suite") if index % 2 == 0
                                                                   else ("suite", "timm"))]
    with tempfile.TemporaryDirectory(prefix="devicebench-peer-") as scratch:
        for number, side in enumerate(order + (["profile"] if profile else []), 1):
            echo(f"[{number}/{len(order) + profile}] {side} ...")
            if side == "timm":
                completed = _checked(run(timm_argv), "timm's benchmark")
                summary = parse_timm_output(completed.stdout)
                timm_figures.append(float(summary["infer_samples_per_sec"]))
                echo(f"    timm resnet18 inference: {timm_figures[-1]:,.0f} images/s")
                continue
            json_path = Path(scratch, f"{side}-{number}.json")
            _checked(run(suite_command(json_path, device, scale_name, side == "profile")), "the suite's tuned row")
            row = tuned_row(json_path)
            if side == "profile":
                rows.append(row)
                seconds = (row.get("profile") or {}).get("seconds", {})
                echo("    profiled round: " + ", ".join(f"{kind} {value * 1e3:.1f} ms" for kind, value in
                                                       seconds.items()))
                continue
            suite_figures.append(float(row["samples_per_s"]))
            rows.append(row)
            echo(f"    devicebench {WORKLOAD} {PIPELINE}: {suite_figures[-1]:,.0f} training images/s")
    timm_median, suite_median = statistics.median(timm_figures), statistics.median(suite_figures)
    last = rows[-1]
    peer = {
        "timm_infer_samples_per_sec": timm_median,
        "devicebench_tuned_samples_per_s": suite_median,
        "ratio": suite_median / timm_median,
        "timm_infer_samples_per_sec_per_process": timm_figures,
        "devicebench_tuned_samples_per_s_per_process": suite_figures,
        "order": order,
        "device_name": last.get("device_name"),
        "torch_version": _version("torch"),
        "timm_version": _version("timm"),
        "scale": scale_name,
        "batch_size": scale.batch_size,
        "image_size": IMAGE_SIZE,
        "amp_dtype": amp_dtype,
        "tuned_dtype": last.get("dtype"),
        "tuning_notes": last.get("tuning_notes"),
        "timm_command": " ".join(timm_argv[1:]),
        "timm_script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        # the same row as a user measures it (the peer ran it in workers of this Python)
        "suite_command": f"devicebench run --processes 1 -- --device {device} --workload {WORKLOAD} "
                         f"--pipeline {PIPELINE} --scale {scale_name}",
        "profile": rows[-1].get("profile") if profile else None,
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    runfile.write_json_atomically(output, peer)
    echo(f"timm {timm_median:,.0f} images/s (inference), devicebench tuned {suite_median:,.0f} training images/s: "
         f"ratio {peer['ratio']:.3f}; written to {output}")
    return peer


def _checked(completed: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if completed.returncode != 0:
        tail = "\n".join((completed.stdout + completed.stderr).strip().splitlines()[-12:])
        raise DevicebenchError(f"{what} failed (exit {completed.returncode}); its output ended:\n{tail}")
    return completed


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
