"""``devicebench peer``: a tuned row beside another project's own benchmark of the same network, on the same GPU.

A user who reads "tuned" takes it as what the device can do; the yardstick is the best public implementation of
the same network measured in the same call:

- ``timm``: timm's ``benchmark.py`` (huggingface/pytorch-image-models), an inference benchmark of resnet18 at the
  suite's image size, batch and 10 classes, mixed precision, channels_last, torch.compile. Its forward is a lower
  bound on the resnet18_cifar training step's time (which also runs BatchNorm in train mode, the head's backward
  and Ranger21), so ``ratio`` = ours / theirs is at most about 1.
- ``nanogpt``: nanoGPT's ``bench.py`` (karpathy/nanoGPT), the training step of the same GPT with fused AdamW,
  flash attention, autocast and torch.compile on synthetic tokens, against the char_gpt tuned row's training
  tokens/s at the same scale. bench.py reads ``configurator.py`` from its folder and fixes GPT-2 124M's sizes, so
  it runs from a copy of its folder whose model line is set to the scale's sizes (``nanogpt_edits`` in the file).

The two run as separate processes, alternated peer, suite, suite, peer, ... (``--processes`` of each), so the
machine's drift over the call falls on both; each side's figure is the median of its processes. With ``--profile``
one more suite process runs under torch.profiler, and the peer file keeps its breakdown (where the remaining time
goes). The script is the user's copy (``--script``): this project neither ships nor imports it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from devicebench import machine_lock, runfile, worker
from devicebench.errors import DevicebenchError, UsageError
from devicebench.scales import Scale, scale_for

PIPELINE = "tuned"
RESULT_MARKER = "--result\n"  # timm's benchmark.py prints its JSON summary after this line
# The line of nanoGPT's bench.py that sizes its model, and what its synthetic tokens are drawn from.
NANOGPT_MODEL_LINE = "n_layer = 12, n_head = 12, n_embd = 768, # size of the model"
NANOGPT_DROPOUT_LINE = "dropout = 0, # for determinism"
NANOGPT_TOKENS = "torch.randint(50304,"
NANOGPT_TIME = re.compile(r"time per iteration: ([0-9.]+)ms")


@dataclass(frozen=True)
class PeerCommand:
    argv: list[str]
    cwd: Path | None = None
    facts: dict = field(default_factory=dict)  # what the peer file records of this peer's configuration


@dataclass(frozen=True)
class Peer:
    """One project's benchmark and the suite row it is set beside."""

    name: str
    workload: str
    script_help: str
    unit: str
    peer_key: str  # the peer file's field for the peer's median
    suite_key: str  # ... and for the suite row's
    suite_field: str  # the row field the suite's figure is read from
    command: Callable[[Path, Scale, str, str, Path], PeerCommand]  # script, scale, amp dtype, device, scratch
    parse: Callable[[str, Scale], float]  # the peer's stdout -> its figure


def timm_command(script: Path, scale: Scale, amp_dtype: str, device: str, scratch: Path) -> PeerCommand:
    """timm's inference benchmark with the tuned resnet18_cifar row's configuration."""
    from devicebench.workloads.resnet18_cifar import IMAGE_SIZE

    return PeerCommand([sys.executable, str(script), "--model", "resnet18", "--bench", "inference", "--img-size",
                        str(IMAGE_SIZE), "-b", str(scale.batch_size), "--num-classes", "10", "--amp", "--amp-dtype",
                        amp_dtype, "--channels-last", "--torchcompile", "--device", device],
                       facts={"timm_version": _version("timm"), "image_size": IMAGE_SIZE})


def parse_timm_output(output: str, scale: Scale | None = None) -> float:
    """Images/s from the JSON summary timm's benchmark.py prints last; a clear error when it printed none."""
    if RESULT_MARKER not in output:
        raise DevicebenchError("timm's benchmark printed no '--result' summary; its output ended:\n"
                               + "\n".join(output.strip().splitlines()[-8:]))
    summary = json.loads(output.rsplit(RESULT_MARKER, 1)[1])
    if "infer_samples_per_sec" not in summary:
        raise DevicebenchError(f"timm's benchmark summary has no infer_samples_per_sec: {sorted(summary)}")
    return float(summary["infer_samples_per_sec"])


def nanogpt_command(script: Path, scale: Scale, amp_dtype: str, device: str, scratch: Path) -> PeerCommand:
    """bench.py run from a copy of its folder, its model sized as the char_gpt row at ``scale``."""
    from devicebench.workloads.char_gpt import sizes_of

    sizes = sizes_of(scale)
    copy = scratch / "nanogpt"
    if not copy.exists():
        shutil.copytree(script.parent, copy, copy_function=shutil.copyfile)  # writable, whatever the modes
        text = (copy / script.name).read_text()
        replacements = (
            (NANOGPT_MODEL_LINE, f"n_layer = {sizes.n_layer}, n_head = {sizes.n_head}, n_embd = {sizes.n_embd}, "
                                 f"vocab_size = {sizes.vocab_size}, # size of the model"),
            (NANOGPT_DROPOUT_LINE, f"dropout = {sizes.dropout}, # as the suite's row"),
            (NANOGPT_TOKENS, f"torch.randint({sizes.vocab_size},"))
        for old, new in replacements:
            if old not in text:
                raise DevicebenchError(f"{script} has no line {old!r}: devicebench peer expects nanoGPT's bench.py "
                                       f"(karpathy/nanoGPT), whose model line it resizes")
            text = text.replace(old, new)
        (copy / script.name).write_text(text)
    edits = (f"model line: n_layer = {sizes.n_layer}, n_head = {sizes.n_head}, n_embd = {sizes.n_embd}, "
             f"vocab_size = {sizes.vocab_size}", f"dropout = {sizes.dropout}",
             f"synthetic tokens drawn from {sizes.vocab_size}")
    return PeerCommand([sys.executable, script.name, "--real_data=False", "--compile=True",
                        f"--batch_size={scale.batch_size}", f"--block_size={sizes.block_size}", f"--device={device}",
                        f"--dtype={amp_dtype}"], cwd=copy, facts={"nanogpt_edits": list(edits)})


def parse_nanogpt_output(output: str, scale: Scale) -> float:
    """Training tokens/s from bench.py's "time per iteration: X ms" (batch x block tokens an iteration)."""
    from devicebench.workloads.char_gpt import sizes_of

    found = NANOGPT_TIME.findall(output)
    if not found:
        raise DevicebenchError("nanoGPT's bench.py printed no 'time per iteration'; its output ended:\n"
                               + "\n".join(output.strip().splitlines()[-8:]))
    return scale.batch_size * sizes_of(scale).block_size / (float(found[-1]) / 1000)


PEERS = {
    "timm": Peer("timm", "resnet18_cifar", "timm's benchmark.py (huggingface/pytorch-image-models)", "images/s",
                 "timm_infer_samples_per_sec", "devicebench_tuned_samples_per_s", "samples_per_s", timm_command,
                 parse_timm_output),
    "nanogpt": Peer("nanogpt", "char_gpt", "nanoGPT's bench.py (karpathy/nanoGPT), beside its model.py and "
                                            "configurator.py", "tokens/s",
                    "nanogpt_tokens_per_s", "devicebench_tuned_tokens_per_s", "tokens_per_s", nanogpt_command,
                    parse_nanogpt_output),
}


def peer_file_name(peer: str, scale: str) -> str:
    """``peer-timm.json`` (the standard scale), ``peer-nanogpt-gpt2.json``."""
    return f"peer-{peer}.json" if scale == "standard" else f"peer-{peer}-{scale}.json"


def suite_command(peer: Peer, json_path: Path, device: str, scale: str, profile: bool) -> list[str]:
    """A worker of this Python measuring the tuned row alone into ``json_path`` (worker.py)."""
    from devicebench.options import RowOptions
    from devicebench.rows import RowSpec

    row = RowSpec(peer.workload, f"devicebench.workloads.{peer.workload}", device, PIPELINE)
    chosen = RowOptions(devices=(device,), pipelines=(PIPELINE,), scale=scale, profile=profile,
                        profile_dir=str(json_path.parent))
    task = worker.Task(rows=[vars(row)], options=chosen.to_dict(), output=str(json_path))
    return worker.command(sys.executable, task.write(json_path.with_suffix(".task.json")))


def tuned_row(json_path: Path, workload: str = "resnet18_cifar") -> dict:
    """The tuned row of a worker's file (its fields); the reason where it was not measured."""
    data = json.loads(json_path.read_text()) if json_path.exists() else {"rows": []}
    for row in data["rows"]:
        if row["status"] == "measured" and row["extra"].get("workload") == workload:
            return row["extra"]
        raise DevicebenchError(f"{workload} {PIPELINE} was not measured: {row['status']}: {row.get('reason')}")
    raise DevicebenchError(f"{json_path} holds no {workload} {PIPELINE} row")


def run_peer(script: Path, output: Path, processes_each: int, device: str, scale_name: str, amp_dtype: str,
             profile: bool, echo: Callable[[str], None] = print,
             run: Callable[[list[str], Path | None], subprocess.CompletedProcess] | None = None,
             peer_name: str = "timm") -> dict:
    """Alternate the peer's benchmark and the suite's tuned row, write the peer file, return what it holds."""
    peer = PEERS[peer_name]
    script = Path(script).resolve()
    if not script.is_file():
        raise UsageError(f"--script {script}: no such file; give the path of {peer.script_help}")
    if processes_each < 1:
        raise UsageError("--processes must be at least 1")
    machine_lock.hold(f"devicebench peer --peer {peer_name}")
    run = run or (lambda argv, cwd: subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                                                   pass_fds=machine_lock.inherited_fds()))
    scale = scale_for(peer.workload, scale_name)
    peer_figures, suite_figures, rows = [], [], []
    order = [side for index in range(processes_each) for side in ((peer.name, "suite") if index % 2 == 0
                                                                   else ("suite", peer.name))]
    with tempfile.TemporaryDirectory(prefix="devicebench-peer-") as scratch:
        peer_command = peer.command(script, scale, amp_dtype, device, Path(scratch))
        for number, side in enumerate(order + (["profile"] if profile else []), 1):
            echo(f"[{number}/{len(order) + profile}] {side} ...")
            if side == peer.name:
                completed = _checked(run(peer_command.argv, peer_command.cwd), f"{peer.name}'s benchmark")
                peer_figures.append(peer.parse(completed.stdout, scale))
                echo(f"    {peer.name}: {peer_figures[-1]:,.0f} {peer.unit}")
                continue
            json_path = Path(scratch, f"{side}-{number}.json")
            _checked(run(suite_command(peer, json_path, device, scale_name, side == "profile"), None),
                     "the suite's tuned row")
            row = tuned_row(json_path, peer.workload)
            rows.append(row)
            if side == "profile":
                seconds = (row.get("profile") or {}).get("seconds", {})
                echo("    profiled round: " + ", ".join(f"{kind} {value * 1e3:.1f} ms" for kind, value in
                                                       seconds.items()))
                continue
            suite_figures.append(float(row[peer.suite_field]))
            echo(f"    devicebench {peer.workload} {PIPELINE}: {suite_figures[-1]:,.0f} training {peer.unit}")
    peer_median, suite_median = statistics.median(peer_figures), statistics.median(suite_figures)
    last = rows[-1]
    result = {
        peer.peer_key: peer_median,
        peer.suite_key: suite_median,
        "ratio": suite_median / peer_median,
        f"{peer.peer_key}_per_process": peer_figures,
        f"{peer.suite_key}_per_process": suite_figures,
        "order": order,
        "device_name": last.get("device_name"),
        "torch_version": _version("torch"),
        "scale": scale_name,
        "batch_size": scale.batch_size,
        "amp_dtype": amp_dtype,
        "tuned_dtype": last.get("dtype"),
        "tuning_notes": last.get("tuning_notes"),
        f"{peer.name}_command": " ".join(peer_command.argv[1:]),
        f"{peer.name}_script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
        # the same row as a user measures it (the peer ran it in workers of this Python)
        "suite_command": f"devicebench run --processes 1 -- --device {device} --workload {peer.workload} "
                         f"--pipeline {PIPELINE} --scale {scale_name}",
        "profile": rows[-1].get("profile") if profile else None,
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    result.update(peer_command.facts)
    runfile.write_json_atomically(output, result)
    echo(f"{peer.name} {peer_median:,.0f} {peer.unit}, devicebench tuned {suite_median:,.0f} training "
         f"{peer.unit}: ratio {result['ratio']:.3f}; written to {output}")
    return result


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
