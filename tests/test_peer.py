"""devicebench peer: the alternation, the figures it keeps and its errors, with fake processes."""

import json
import subprocess
from pathlib import Path

import pytest

from devicebench import peer, runfile
from devicebench.errors import DevicebenchError, UsageError

RUNS = Path(__file__).parent / "runs"


def suite_json(samples_per_s: float) -> dict:
    """A worker's file whose row is a real saved cuda resnet18_cifar row made the tuned one, at ``samples_per_s``."""
    data = runfile.migrate(json.loads((RUNS / "devices_after.json").read_text()))
    bench, = [b for b in data["benchmarks"] if b["name"] == "test_resnet18_cifar[cuda-resident]"]
    bench["extra_info"].update(pipeline="tuned", samples_per_s=samples_per_s, profile={"seconds": {"kernels": 0.05}})
    return {"machine_info": data["machine_info"], "rows": [{"name": "test_resnet18_cifar[cuda-tuned]",
                                                            "status": "measured", "extra": bench["extra_info"]}]}


class FakeProcesses:
    """Stands in for subprocess.run: timm prints its summary, the suite's worker writes its file."""

    def __init__(self, timm=(200.0, 220.0), suite=(180.0, 170.0, 150.0), timm_output=None):
        self.timm, self.suite, self.timm_output, self.calls = list(timm), list(suite), timm_output, []

    def __call__(self, argv, cwd=None):
        if "--torchcompile" in argv:
            self.calls.append("timm")
            output = self.timm_output or f"log line\n--result\n{json.dumps({'infer_samples_per_sec': self.timm.pop(0)})}"
            return subprocess.CompletedProcess(argv, 0, output, "")
        task = json.loads(Path(argv[-1]).read_text())
        self.calls.append("profile" if task["options"]["profile"] else "suite")
        assert task["rows"] == [{"workload": "resnet18_cifar", "module": "devicebench.workloads.resnet18_cifar",
                                 "device": "cuda", "pipeline": "tuned"}]
        Path(task["output"]).write_text(json.dumps(suite_json(self.suite.pop(0))))
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_alternates_the_sides_and_writes_both_medians_and_their_ratio(tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)  # where the user stands: nothing may be written there
    script = tmp_path / "benchmark.py"
    script.write_text("# timm's benchmark")
    fake = FakeProcesses()
    out = tmp_path / "h200" / "peer-timm.json"
    result = peer.run_peer(script, out, 2, "cuda", "standard", "bfloat16", profile=True, echo=lambda _: None,
                           run=fake)
    assert fake.calls == ["timm", "suite", "suite", "timm", "profile"]
    saved = json.loads(out.read_text())
    assert saved == result
    assert saved["timm_infer_samples_per_sec"] == 210.0 and saved["devicebench_tuned_samples_per_s"] == 175.0
    assert saved["ratio"] == pytest.approx(175.0 / 210.0)
    assert saved["devicebench_tuned_samples_per_s_per_process"] == [180.0, 170.0]  # the profiled one is apart
    assert saved["profile"] == {"seconds": {"kernels": 0.05}}
    assert "--img-size 96 -b 1024 --num-classes 10" in saved["timm_command"]
    assert not list(out.parent.glob("*.part")) and list(here.iterdir()) == []
    assert saved["suite_command"] == ("devicebench run --processes 1 -- --device cuda --workload resnet18_cifar "
                                      "--pipeline tuned --scale standard")


def test_a_missing_script_a_silent_timm_and_a_failed_suite_are_named(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        peer.run_peer(tmp_path / "nope.py", tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False)
    script = tmp_path / "benchmark.py"
    script.write_text("")
    with pytest.raises(DevicebenchError, match="printed no '--result' summary"):
        peer.run_peer(script, tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False,
                      echo=lambda _: None, run=FakeProcesses(timm_output="CUDA out of memory"))

    def failing(argv, cwd=None):
        if "--torchcompile" in argv:
            return FakeProcesses()(argv)
        return subprocess.CompletedProcess(argv, 1, "", "RuntimeError: boom")
    with pytest.raises(DevicebenchError, match=r"tuned row failed \(exit 1\)(.|\n)*boom"):
        peer.run_peer(script, tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False,
                      echo=lambda _: None, run=failing)
    assert not (tmp_path / "o.json").exists()


NANOGPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "nanogpt"


def nanogpt_folder(tmp_path) -> Path:
    """bench.py, model.py, configurator.py as nanoGPT ships them: the shared copy, else bench.py's lines that the
    peer edits."""
    folder = tmp_path / "nanogpt"
    if NANOGPT.is_dir():
        import shutil
        shutil.copytree(NANOGPT, folder)
    else:
        folder.mkdir()
        (folder / "bench.py").write_text(f"{peer.NANOGPT_MODEL_LINE}\n{peer.NANOGPT_DROPOUT_LINE}\n"
                                         f"x = {peer.NANOGPT_TOKENS} (12, 1024))\n")
    (folder / "bench.py").chmod(0o444)  # as a read-only checkout holds it
    return folder


def test_nanogpt_runs_from_a_resized_copy_and_its_tokens_per_s_is_set_beside_char_gpts(tmp_path):
    folder = nanogpt_folder(tmp_path)
    original = (folder / "bench.py").read_text()
    calls = []

    def fake(argv, cwd=None):
        if cwd is not None:  # bench.py, in its copy
            text = (cwd / "bench.py").read_text()
            calls.append(("nanogpt", argv, text))
            return subprocess.CompletedProcess(argv, 0, "19/20 loss: 4.1\ntime per iteration: 8.0000ms, MFU: 9%", "")
        task = json.loads(Path(argv[-1]).read_text())
        calls.append(("suite", task["rows"], task["options"]["scale"]))
        row = {"workload": "char_gpt", "pipeline": "tuned", "device_name": "NVIDIA H200", "dtype": "bfloat16",
               "tokens_per_s": 2_500_000.0, "tuning_notes": []}
        Path(task["output"]).write_text(json.dumps({"rows": [{"status": "measured", "extra": row}]}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    out = tmp_path / "peer-nanogpt.json"
    result = peer.run_peer(folder / "bench.py", out, 1, "cuda", "standard", "bfloat16", False, echo=lambda _: None,
                           run=fake, peer_name="nanogpt")
    (_, argv, text), (_, rows, scale) = calls
    assert "n_layer = 6, n_head = 6, n_embd = 384, vocab_size = 65, # size of the model" in text
    assert "dropout = 0.2," in text and "torch.randint(65," in text
    assert argv[1:] == ["bench.py", "--real_data=False", "--compile=True", "--batch_size=64", "--block_size=256",
                        "--device=cuda", "--dtype=bfloat16"]
    assert (folder / "bench.py").read_text() == original  # the user's copy is never edited
    assert rows == [{"workload": "char_gpt", "module": "devicebench.workloads.char_gpt", "device": "cuda",
                     "pipeline": "tuned"}] and scale == "standard"
    assert result["nanogpt_tokens_per_s"] == pytest.approx(64 * 256 / 0.008)
    assert result["ratio"] == pytest.approx(2_500_000 / (64 * 256 / 0.008))
    assert json.loads(out.read_text())["nanogpt_edits"][0].startswith("model line: n_layer = 6")
    assert peer.peer_file_name("nanogpt", "gpt2") == "peer-nanogpt-gpt2.json"


def test_a_bench_py_of_another_shape_is_refused_naming_the_line(tmp_path):
    (tmp_path / "bench.py").write_text("print('not nanoGPT')\n")
    with pytest.raises(DevicebenchError, match="has no line 'n_layer = 12"):
        peer.run_peer(tmp_path / "bench.py", tmp_path / "o.json", 1, "cuda", "standard", "bfloat16", False,
                      echo=lambda _: None, run=lambda argv, cwd=None: None, peer_name="nanogpt")
    with pytest.raises(DevicebenchError, match="printed no 'time per iteration'"):
        peer.parse_nanogpt_output("Compiling model...\nKilled", peer.scale_for("char_gpt", "standard"))
