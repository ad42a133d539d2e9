"""The fields of a result row (pytest-benchmark's ``extra_info``), defined once: what each means, and which of
them make up the row's identity.

The measurement checks every row it makes against this table (an unknown or missing field is a bug, caught by the
tests); ``results.Row`` reads rows back through it. The file's schema version and the migrations of older files
live in runfile.py. History: 1 = first release; 2 = training timed apart from validation (``train_seconds``),
runs of several processes; 3 = the version at the file's top, each round time once, in its process's entry.
"""

from __future__ import annotations

# A data-parallel row (distributed.py) is another experiment at each world size, backend, view, NCCL and wiring;
# a row of one process has none of these, so its identity is what it always was.
DISTRIBUTED_FIELDS = ("world_size", "distributed_backend", "scaling_view", "nccl_version", "gpu_topology")

# Identity: two rows are the same experiment exactly when these agree. The work (workload + version, pipeline,
# the scale's sizes), the device, and every option that changes the work. A ratio between rows of different
# identity is never reported as a change (compare.py's "devices" view compares across the device fields only).
WORK_FIELDS = ("workload", "workload_version", "pipeline", "scale", "samples_per_round", "valid_samples",
               "batch_size", "valid_batch_size")
OPTION_FIELDS = ("workers", "optimizer", "pretrained", "data_source", "dtype", "channels_last", "compiled",
                 "cuda_graphs", *DISTRIBUTED_FIELDS)
DEVICE_FIELDS = ("device", "device_name")
# Rounds pinned to one core (``round_core`` set, affinity.py) ran the host side another way: on the H200 the pinned
# workers of mnist_mlp resident were up to 1.26x as fast as free ones beside them. So a pinned row is another
# experiment from an unpinned one, and its identity says so with this option, derived from ``round_core``; an
# unpinned row's identity is what it always was.
PINNED_ROUNDS = "pinned_rounds"

# name -> meaning. Every row has these (options a pipeline does not have are absent, e.g. ``workers``).
FIELDS: dict[str, str] = {
    "workload": "workload name (mnist_mlp, resnet18_cifar, ...)",
    "workload_version": "bumped when the work a round does changes: rows of different versions never compare",
    "pipeline": "seed (the post as written), resident (data on the device), tuned (what the device supports)",
    "scale": "scale profile name (quick, standard, full, gpt2)",
    "samples_per_round": "training samples per round",
    "valid_samples": "validation samples per round",
    "batch_size": "training batch size",
    "valid_batch_size": "validation batch size",
    "device": "device type: cpu, mps or cuda",
    "device_name": "the device's model name",
    "warmup_rounds": "rounds run before timing, not counted",
    "samples_per_s": "training samples per second: samples_per_round / the median process's median train_seconds",
    "loader_wait_fraction": "share of the rounds spent blocked waiting for the next batch (mean over processes)",
    "val_loss": "untimed evaluation after the timed rounds",
    "val_accuracy": "untimed evaluation after the timed rounds",
    "peak_memory_bytes": "cuda max_memory_allocated; mps torch.accelerator.max_memory_allocated where this torch "
                         "reports it; null otherwise (absent, never 0)",
    "data_source": "real or synthetic",
    "flops_per_sample": "training FLOPs per sample (torch.utils.flop_counter)",
    "flops_per_round": "FLOPs of a round, training and validation",
    "achieved_tflops": "flops_per_round / median round",
    "peak_tflops": "published dense peak of the device for peak_dtype; null where none is published",
    "peak_dtype": "the dtype the peak is for",
    "utilization": "achieved_tflops / peak_tflops",
    "unstable": "rounds vary (CV >= 10% or slowest >= 1.5x median) or are under 1 ms",
    "unstable_reason": "why, with the figure",
    "cudnn_benchmark": "torch.backends.cudnn.benchmark, set where the benchmark starts",
    "cudnn_allow_tf32": "torch.backends.cudnn.allow_tf32",
    "matmul_allow_tf32": "torch.backends.cuda.matmul.allow_tf32",
    "float32_matmul_precision": "torch.get_float32_matmul_precision()",
    "compile_cache": "fresh (this process compiled from an empty torch.compile cache), shared (the user's), or "
                     "kept (the compiled code of earlier workers of the same environment, launch configurations "
                     "picked anew)",
    "planted_slowdown_fraction": "a planted slowdown (--slowdown-fraction): each training epoch and validation "
                                 "pass made this fraction longer on the device; 0 for a real measurement. Not part "
                                 "of the identity, so a planted run compares with a clean one",
    "round_core": "the core the thread running the rounds was pinned to, the same for both workers of a pair "
                  "(affinity.py); null: not pinned (a cpu row, a plain run, no affinity "
                  "call)",
    # workload and pipeline options
    "workers": "DataLoader workers (resnet18_cifar seed)",
    "optimizer": "resnet18_cifar optimizer",
    "pretrained": "which ResNet18 weights: hub:..., file:NAME, none",
    "image_size": "resnet18_cifar input size",
    "block_size": "char_gpt: tokens in a window (its context); a sample is one window",
    "n_layer": "char_gpt: transformer blocks",
    "n_embd": "char_gpt: model width",
    "vocab_size": "char_gpt: token vocabulary (65 characters, or GPT-2's 50304 at --scale gpt2)",
    "tokens_per_sample": "char_gpt: tokens in one sample (block_size)",
    "iterations_per_round": "char_gpt: training iterations (optimizer steps) in a round",
    "tokens_per_s": "char_gpt: training tokens per second: samples_per_s x tokens_per_sample",
    "ms_per_iteration": "char_gpt: milliseconds per training iteration: batch_size / samples_per_s",
    "dtype": "autocast dtype that ran (float32 = none)",
    "channels_last": "tuned: channels_last layout",
    "compiled": "tuned: torch.compile",
    "cuda_graphs": "tuned: CUDA graph capture",
    "fused_optimizer": "tuned mnist_mlp: Adam's update fused (compiled into one kernel, or fused=True); "
                       "tuning_notes says which",
    "compile_s": "tuned: compile and capture time (warm-up, not timed)",
    "compile_options": "tuned, compiled: inductor settings that keep it from picking kernels by timing "
                       "(tuning.FIXED_CHOICE_OPTIONS, those this torch has); {} where timed picks are kept",
    "tuning_notes": "tuned: what it could not use, and why",
    # counts of one untimed training epoch per optimizer step (counts.py): the same in every process of one code
    "ops_per_step": "aten operators dispatched on the host per training step (nested calls included)",
    "kernels_per_step": "device kernels launched per step (cuda: CUPTI's kernel records; cpu, mps: aten operators "
                        "that call no other)",
    "syncs_per_step": "cuda: host waits for the device per step (stream/device/event synchronize, blocking "
                      "cudaMemcpy); null elsewhere",
    "allocations_per_step": "cuda: caching-allocator allocations per step; null on cpu and mps",
    "counted_steps": "training steps the counts are the mean of (counts.py says which)",
    # --profile (profiling.py)
    "profile": "one extra, untimed round under torch.profiler: basis, round_seconds (perf_counter), "
               "traced_seconds, seconds per kind, host_gaps_in_optimizer_step, trace (its path)",
    # accelerator rows: the parity check run before a device's first row of each workload (parity.py)
    "parity_failed": "the device trained differently from the cpu (its results are wrong); compare never ranks it",
    "parity_max_param_rel_diff": "largest relative difference of a parameter from the cpu's after the check's steps",
    "parity_mismatches": "where the device differed (the first five), when parity failed",
    # mps rows (fallback.py, docs/mps.md)
    "mps_fallback_enabled": "mps: PYTORCH_ENABLE_MPS_FALLBACK was set, so operators mps lacks may run on the cpu",
    "cpu_fallback_ops": "mps: the operators that ran on the cpu during the row (torch's fallback warnings); [] none",
    # each process's rounds (one entry for a plain pytest run, one per worker for devicebench run)
    "processes": "one entry per process: its round_seconds (every timed round: training epoch + validation pass), "
                 "train_seconds (each training epoch), val_seconds, samples_per_s, compile_s, loader_wait_fraction, "
                 "unstable_reason; what the host did to its timed rounds (host.py): median_page_faults and "
                 "median_preemptions (involuntary context switches) a round, cpu_steal_fraction (the machine's CPU "
                 "time the hypervisor gave other guests; Linux); a plain run's entry also the per-round losses, "
                 "loader waits, page faults and preemptions; in an interleaved run (devicebench run --env A=.. "
                 "--env B=..) its pair, round_sequence (each timed round's turn number in the pair's schedule) and "
                 "built_together (its build ran beside the other workers' builds: interleave.py; its compile_s "
                 "then includes their load)",
    "interleave_id": "the interleaved run this row's processes came from; rows of the same id and pair ran side "
                     "by side, round for round, and are judged as pairs (significance.py)",
    # data-parallel rows (devicebench scaling: distributed.py, scaling.py)
    "world_size": "ranks of the data-parallel run, one process and one device each",
    "distributed_backend": "torch.distributed backend: nccl on cuda, gloo on cpu",
    "scaling_view": "weak (each rank the scale's batch and epoch) or strong (the scale's batch and epoch shared out)",
    "nccl_version": "the NCCL torch was built with (cuda rows); null elsewhere",
    "gpu_topology": "nvidia-smi topo -m as printed (cuda rows); null where it could not be read",
    "all_reduce_bytes_per_step": "gradient bytes each rank all-reduces per training step (parameters that train)",
    "broadcast_bytes_per_step": "buffer bytes rank 0 broadcasts before each forward (DDP's broadcast_buffers)",
    "communication_share": "one extra untimed round under torch.profiler on every rank: the share of its wall time "
                           "with a collective in flight (NCCL kernels on cuda, gloo operations on cpu), median over "
                           "the ranks",
    "communication_share_by_rank": "communication_share of each rank, rank 0 first",
    "timed_with_validation": "a schema 1 row: its train_seconds are whole rounds (training and validation)",
}
# The kinds a --profile round's time is cut into (profiling.py says what each holds), in display order.
PROFILE_KINDS = ("matmul_conv", "norm_elementwise", "optimizer", "data_movement", "compilation", "host_gaps")

REQUIRED = (*WORK_FIELDS[:4], "samples_per_round", *DEVICE_FIELDS, "processes")


def derived_speeds(extra: dict) -> dict:
    """Speeds computed from ``samples_per_s`` for a workload whose samples are windows of tokens (char_gpt)."""
    if "tokens_per_sample" not in extra:
        return {}
    return {"tokens_per_s": extra["samples_per_s"] * extra["tokens_per_sample"],
            "ms_per_iteration": 1000 * extra["batch_size"] / extra["samples_per_s"]}


def check_row(extra: dict) -> None:
    """Raise ValueError naming any field this table does not define, or a required field that is missing."""
    unknown = sorted(set(extra) - set(FIELDS))
    missing = [name for name in REQUIRED if name not in extra]
    if unknown or missing:
        raise ValueError(f"result row does not match devicebench/schema.py: unknown {unknown}, missing {missing}")
