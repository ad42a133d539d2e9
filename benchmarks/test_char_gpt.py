"""char_gpt (nanoGPT's shakespeare_char model) on every selected device and pipeline: test_char_gpt[<device>-<pipeline>]."""

from devicebench.workloads import char_gpt

WORKLOAD = char_gpt  # the plugin parametrizes `pipeline` with the pipelines it offers


def test_char_gpt(run_workload, device, pipeline):
    run_workload(WORKLOAD, device, pipeline)
