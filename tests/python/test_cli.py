"""`bitnet-cli info` as a user meets it: the bundled model, JSON for
scripts, and one clear error line with a non-zero exit for every bad file."""
import json
import os
import re

import pytest

from conftest import ROOT, run_cli

MALFORMED = sorted((ROOT / "tests" / "malformed").glob("*.gguf"))


def test_info_on_the_bundled_model():
    out = run_cli("info").stdout
    assert "bundled" in out
    assert "architecture:  bitnet-b1.58" in out
    assert "blk.3.ffn_down.weight" in out
    data = json.loads(run_cli("info", "--json").stdout)
    assert data["n_tensors"] == 46  # 4 layers of 11, embedding, output norm
    assert data["architecture"] == "bitnet-b1.58"
    assert data["tensors"][2]["type"] == "I2_S"
    assert data["model_check"]["ok"] is True
    assert data["model_check"]["activation"] == "Relu2"


def test_info_says_when_a_valid_gguf_is_not_a_runnable_model(tmp_path):
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "not_a_model.gguf"
    w = GGUFWriter(path, "gpt9")
    w.add_tensor("x", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    proc = run_cli("info", path)
    assert 'model check:   not runnable: unknown architecture "gpt9"' in proc.stdout
    data = json.loads(run_cli("info", path, "--json").stdout)
    assert data["model_check"]["ok"] is False


def test_corpus_is_large_enough():
    assert len(MALFORMED) >= 25


@pytest.mark.parametrize("path", MALFORMED, ids=[p.stem for p in MALFORMED])
def test_bad_file_gives_one_clear_line(path):
    proc = run_cli("info", path, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bitnet-cli: error: {path}: ")
    assert "panicked" not in proc.stderr
    assert proc.stdout == ""


def test_missing_file():
    proc = run_cli("info", ROOT / "does-not-exist.gguf", check=False)
    assert proc.returncode == 1
    assert "No such file" in proc.stderr


def test_dump_unknown_tensor():
    proc = run_cli("dump", "--tensor", "nope", "-o", "/dev/null", check=False)
    assert proc.returncode == 1
    assert 'no tensor named "nope"' in proc.stderr


def test_check_tensors_finds_a_nan_scale(tmp_path):
    import numpy as np
    from gguf import GGMLQuantizationType as QT
    from gguf import GGUFWriter

    path = tmp_path / "nan_scale.gguf"
    blocks = np.full((2, 66), 0x55, np.uint8)  # all weights 0
    blocks[1, 64:66] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
    w = GGUFWriter(path, "bitnet")
    w.add_tensor("w", blocks.reshape(1, 132), raw_dtype=QT.TQ2_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert run_cli("info", path).returncode == 0
    proc = run_cli("info", path, "--check-tensors", check=False)
    assert proc.returncode == 1
    assert 'tensor "w" (TQ2_0): block 1 has scale NaN' in proc.stderr


def test_inference_streams_and_reports_timings():
    proc = run_cli("inference", "-p", "Hello", "-n", "4", "--temp", "0")
    assert proc.stdout.startswith("Hello")
    assert "prompt: " in proc.stderr and "tokens/s" in proc.stderr and "stop: MaxTokens" in proc.stderr
    # Same settings, same output.
    assert run_cli("inference", "-p", "Hello", "-n", "4", "--temp", "0").stdout == proc.stdout


def test_inference_prompt_longer_than_context_is_a_clear_error():
    proc = run_cli("inference", "-p", "a fairly long prompt " * 5, "-c", "8", check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert "but the context holds 8" in lines[-1], proc.stderr
    assert "panicked" not in proc.stderr


def test_bundled_model_writes_english_looking_text():
    proc = run_cli("inference", "-p", "And it came to pass", "-n", "24", "--temp", "0")
    assert proc.stdout.startswith("And it came to pass")
    new = [w.strip(".,;:!?'\"()") for w in proc.stdout[len("And it came to pass"):].split()]
    alpha = [w for w in new if w.isascii() and w.isalpha()]
    assert len(alpha) >= 8 and len(alpha) >= 0.7 * len(new), proc.stdout
    assert "tiny-bitnet-trained" in proc.stderr


def test_random_seed_is_printed():
    proc = run_cli("inference", "-p", "Hi", "-n", "2")
    assert "seed: " in proc.stderr


def test_chat_reads_turns_from_stdin():
    import subprocess

    from conftest import binary

    proc = subprocess.run(
        [str(binary("bitnet-cli")), "chat", "-n", "3", "--temp", "0"],
        input="Hello\nAgain\n",
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    # One reply line per turn (replies may hold newlines of their own).
    assert proc.stdout.count("\n") >= 2


def test_benchmark_reports_llama_bench_fields():
    proc = run_cli("benchmark", "-p", "8", "-n", "4", "-r", "2", "--warmup", "0", "-t", "1", "-o", "json",
                   "--simd-level", "scalar", "--output-table", "file,int8")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["n_prompt"], r["n_gen"], r["output_table"]) for r in rows] == [
        (8, 0, "file"), (0, 4, "file"), (8, 0, "int8"), (0, 4, "int8")]
    for r in rows:
        assert r["n_threads"] == 1 and r["simd_level"] == "scalar"
        assert len(r["samples_ts"]) == 2 and r["avg_ts"] > 0 and r["stddev_ts"] >= 0
        assert r["model_size"] > 0 and r["model_n_params"] > 0
    md = run_cli("benchmark", "-p", "8", "-n", "0", "-r", "1", "--warmup", "0", "-t", "1")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("| model | size | params | backend | threads | test | t/s |")
    assert "| pp8 |" in md.stdout


def test_benchmark_at_depth():
    proc = run_cli("benchmark", "-p", "4", "-n", "2", "-d", "0,16", "-r", "1", "--warmup", "0", "-t", "1",
                   "-o", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["test"], r["n_depth"]) for r in rows] == [
        ("pp4", 0), ("tg2", 0), ("pp4 @ d16", 16), ("tg2 @ d16", 16)]
    # A test that does not fit the model's context is refused up front.
    proc = run_cli("benchmark", "-p", "4", "-n", "0", "-d", "100000", "-r", "1", check=False)
    assert proc.returncode != 0 and "context" in proc.stderr


def test_benchmark_refuses_bad_options():
    proc = run_cli("benchmark", "-r", "0", check=False)
    assert proc.returncode != 0 and "repetitions" in proc.stderr
    proc = run_cli("benchmark", "--simd-level", "mmx", check=False)
    assert proc.returncode != 0 and "unknown SIMD level" in proc.stderr
    proc = run_cli("benchmark", "--quantization", "tl3", check=False)
    assert proc.returncode != 0 and "tl1, tl2" in proc.stderr


def _two_levels():
    """Two kernel levels every machine of this architecture runs."""
    import platform

    return "scalar,sse" if platform.machine().lower() in ("x86_64", "amd64") else "scalar,neon"


def test_benchmark_lists_batch_sizes_threads_and_levels():
    proc = run_cli("benchmark", "-p", "8", "-n", "2", "--iterations", "2", "--warmup", "0", "-o", "json",
                   "--threads", "1,2", "--simd-level", _two_levels(), "--batch-sizes", "0,4", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    low, high = _two_levels().split(",")
    # The product of the lists, in the order level, threads, batch size.
    want = [(level, t, b, test) for level in (low, high) for t in (1, 2) for b in (0, 4)
            for test in ("pp8", "tg2")]
    assert [(r["simd_level"], r["n_threads"], r["n_batch"], r["test"]) for r in rows] == want
    assert all(len(r["samples_ts"]) == 2 and r["avg_ts"] > 0 for r in rows)
    md = run_cli("benchmark", "-p", "8", "-n", "0", "-r", "1", "--warmup", "0", "-t", "1", "-b", "4")
    assert "| pp8 b4 |" in md.stdout, md.stdout


def test_benchmark_json_has_llama_bench_fields():
    import re

    model = ROOT / "models" / "tiny-bitnet-i2s.gguf"
    args = ("benchmark", "-m", model, "-p", "4", "-n", "0", "-r", "1", "--warmup", "0", "-t", "1", "-o", "json",
            "--device", "cpu")
    row = json.loads(run_cli(*args).stdout)[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["test_time"]), row["test_time"]
    assert re.fullmatch(r"[0-9a-f]{7,40}|unknown", row["build_commit"]), row["build_commit"]
    assert isinstance(row["build_number"], int)
    assert row["cpu_info"] and row["gpu_info"] == "" and row["backends"] == "CPU"
    assert row["model_filename"] == str(model) and row["use_mmap"] is True
    assert row["type_k"] == row["type_v"] == "f32" and row["n_ubatch"] == row["n_batch"] == 0
    assert json.loads(run_cli(*args, "--no-mmap").stdout)[0]["use_mmap"] is False
    # The bundled model is compiled in: named by its file, never mapped.
    row = json.loads(run_cli("benchmark", *args[3:]).stdout)[0]
    assert row["model_filename"] == "tiny-bitnet-trained-i2s.gguf" and row["use_mmap"] is False


def test_benchmark_threads_default_to_rayon_num_threads():
    proc = run_cli("benchmark", "-p", "4", "-n", "0", "-r", "1", "--warmup", "0", "-o", "json",
                   env={"RAYON_NUM_THREADS": "1"})
    assert [r["n_threads"] for r in json.loads(proc.stdout)] == [1]


def test_benchmark_measures_bandwidth_and_the_decode_floor():
    proc = run_cli("benchmark", "-p", "0", "-n", "2", "-r", "1", "--warmup", "0", "-t", "1",
                   "--output-table", "file,int8", "--bandwidth", "32")
    bw = re.search(r"memory read bandwidth \(1 threads\): ([0-9.]+) GB/s", proc.stderr)
    assert bw and float(bw.group(1)) > 0, proc.stderr
    floors = re.findall(r"decode floor with the (\w+) head: (\d+) MB per token", proc.stderr)
    assert [h for h, _ in floors] == ["file", "int8"], proc.stderr
    # The int8 head reads fewer bytes per token than the file's F16 one.
    assert int(floors[1][1]) <= int(floors[0][1])
    proc = run_cli("benchmark", "-p", "0", "-n", "1", "-r", "1", "--bandwidth", "0", check=False)
    assert proc.returncode == 1 and "1 MiB or more" in proc.stderr


def test_simd_level_is_chosen_by_flag_or_environment_and_logged():
    args = ("inference", "-p", "Once upon a time", "-n", "8", "--temp", "0", "--device", "cpu")
    want = run_cli(*args).stdout
    by_flag = run_cli(*args, "--simd-level", "scalar", env={"RUST_LOG": "debug"})
    by_env = run_cli(*args, env={"RUST_LOG": "debug", "BITNET_SIMD_LEVEL": "scalar"})
    for proc in (by_flag, by_env):
        assert proc.stdout == want
        assert "CPU backend, scalar kernels (" in proc.stderr, proc.stderr
        assert "RMSNorm: scalar" in proc.stderr
    best = run_cli(*args, env={"RUST_LOG": "debug"})
    assert re.search(r"CPU backend, \w+ kernels \(I2_S / TQ2_0 x int8, one token: ", best.stderr)
    # benchmark too: its rows run and name the variable's level.
    proc = run_cli("benchmark", "-p", "4", "-n", "2", "-r", "1", "--warmup", "0", "-t", "1", "-o", "json",
                   "--device", "cpu", env={"BITNET_SIMD_LEVEL": "scalar"})
    assert {r["simd_level"] for r in json.loads(proc.stdout)} == {"scalar"}, proc.stdout
    # A level this CPU cannot run: the flag is refused, the variable warns.
    proc = run_cli(*args, "--simd-level", "avx512vnni", check=False)
    if proc.returncode != 0:
        assert "cannot run the avx512vnni kernels" in proc.stderr
        env = run_cli(*args, env={"BITNET_SIMD_LEVEL": "avx512vnni", "RUST_LOG": "warn"})
        assert "BITNET_SIMD_LEVEL=avx512vnni cannot be used here" in env.stderr
        assert env.stdout == want
    else:
        assert proc.stdout == want


def test_kernel_selection_example_names_each_operation():
    import subprocess

    from conftest import binary

    out = subprocess.run([str(binary("examples/kernel_selection"))], capture_output=True, text=True,
                         env={**os.environ, "BITNET_SIMD_LEVEL": "scalar"}, check=True).stdout
    assert out.startswith("level: scalar (BITNET_SIMD_LEVEL=scalar)")
    for op in ("TQ1_0 x int8, one token", "F16 embedding / LM head", "RMSNorm", "RoPE",
               "attention scores", "activation quantization", "TL1 / TL2 tiles"):
        assert re.search(rf"{re.escape(op)} +scalar$", out, re.M), out


def test_lookup_table_kernels_give_the_same_tokens():
    args = ("inference", "-p", "Once upon a time", "-n", "12", "--temp", "0", "--device", "cpu")
    want = run_cli(*args).stdout
    for q in ("tl1", "tl2"):
        assert run_cli(*args, "--quantization", q).stdout == want, q
    proc = run_cli("benchmark", "-p", "8", "-n", "2", "-r", "1", "--warmup", "0", "-t", "1", "-o", "json",
                   "--device", "cpu", "--quantization", "i2s,tl1,tl2")
    assert proc.returncode == 0, proc.stderr
    assert [r["quantization"] for r in json.loads(proc.stdout)] == ["i2s", "i2s", "tl1", "tl1", "tl2", "tl2"]


def test_tq1_widened_to_tq2_gives_the_same_tokens(tmp_path):
    path = tmp_path / "tq1.gguf"
    run_cli("gen-fixture", "-o", path, "--type", "tq1_0", "--seed", 5)
    args = ("inference", "-m", path, "-p", "Once upon a time", "-n", "8", "--temp", "0", "--device", "cpu")
    want = run_cli(*args).stdout
    assert run_cli(*args, "--quantization", "tq2").stdout == want


def test_benchmark_configs_compare_and_prompts(tmp_path):
    (tmp_path / "a.toml").write_text('name = "base"\nthreads = 1\nsimd_level = "scalar"\n')
    (tmp_path / "b.toml").write_text('threads = 1\nsimd_level = "scalar"\noutput_table = "int8"\nbatch_size = 4\n')
    (tmp_path / "p.txt").write_text("Hello world\n\nOnce upon a time\n")
    out = tmp_path / "res.json"
    proc = run_cli("benchmark", "-p", "8", "-n", "2", "-r", "1", "--warmup", "0",
                   "--configs", f"{tmp_path / 'a.toml'},{tmp_path / 'b.toml'}", "--compare",
                   "--prompts", tmp_path / "p.txt", "--output", out)
    assert "| test | base | b |" in proc.stdout
    assert "| prompts(2) |" in proc.stdout
    rows = json.loads(out.read_text())
    assert [(r["config"], r["test"], r["n_batch"]) for r in rows] == [
        ("base", "pp8", 0), ("base", "tg2", 0), ("base", "prompts(2)", 0),
        ("b", "pp8", 4), ("b", "tg2", 4), ("b", "prompts(2)", 4)]
    (tmp_path / "bad.toml").write_text("threads = 1\nbogus = 2\n")
    proc = run_cli("benchmark", "--configs", tmp_path / "bad.toml", check=False)
    assert proc.returncode != 0 and "unknown field `bogus`" in proc.stderr


def test_no_mmap_gives_the_same_tokens():
    model = ROOT / "models" / "tiny-bitnet-i2s.gguf"
    a = run_cli("inference", "-m", model, "-p", "Hello", "-n", "6", "--temp", "0")
    b = run_cli("inference", "-m", model, "-p", "Hello", "-n", "6", "--temp", "0", "--no-mmap")
    assert a.stdout == b.stdout
    proc = run_cli("inference", "-m", "/nonexistent.gguf", "-p", "hi", "--no-mmap", check=False)
    assert proc.returncode == 1 and "No such file" in proc.stderr


def _has_wgpu_adapter():
    return "wgpu:0" in run_cli("devices").stdout


def test_devices_lists_the_cpu_and_adapters():
    proc = run_cli("devices")
    assert proc.stdout.startswith("cpu ")
    if os.environ.get("REQUIRE_GPU") == "1":
        assert "wgpu:0" in proc.stdout and "max_storage_buffer_binding_size" in proc.stdout


def test_device_wgpu_gives_the_cpu_tokens_and_auto_skips_software_adapters():
    if not _has_wgpu_adapter():
        assert os.environ.get("REQUIRE_GPU") != "1", "REQUIRE_GPU=1 but no wgpu adapter"
        pytest.skip("no wgpu adapter")
    args = ("inference", "-p", "And it came to pass", "-n", "16", "--temp", "0")
    cpu = run_cli(*args, "--device", "cpu")
    gpu = run_cli(*args, "--device", "wgpu")
    assert gpu.stdout == cpu.stdout
    # A CPU option with the GPU is refused, not silently dropped.
    proc = run_cli(*args, "--device", "wgpu", "--simd-level", "scalar", check=False)
    assert proc.returncode == 1 and "--simd-level scalar is a CPU option" in proc.stderr
    proc = run_cli("benchmark", "-p", "4", "-n", "0", "-r", "1", "--device", "wgpu", "--simd-level", "scalar",
                   check=False)
    assert proc.returncode == 1 and "--simd-level scalar is a CPU option" in proc.stderr
    # lavapipe / SwiftShader are software: auto keeps the CPU and says nothing.
    if "(software" in run_cli("devices").stdout and "type=DiscreteGpu" not in run_cli("devices").stdout:
        auto = run_cli(*args)
        assert "device: " not in auto.stderr
    bench = run_cli("benchmark", "-p", "8", "-n", "4", "-r", "1", "--warmup", "0", "-o", "json",
                    "--device", "cpu,wgpu")
    rows = json.loads(bench.stdout)
    assert [r["backends"] for r in rows] == ["CPU", "CPU", "wgpu", "wgpu"]
    assert all(r["avg_ts"] > 0 for r in rows)


def test_bad_device_is_one_clear_line():
    proc = run_cli("inference", "-p", "x", "-n", "1", "--device", "tpu", check=False)
    assert proc.returncode != 0 and "tpu" in proc.stderr
    proc = run_cli("inference", "-p", "x", "-n", "1", "--device", "wgpu:99", check=False)
    assert proc.returncode == 1
    assert "wgpu adapter 99 does not exist" in proc.stderr or "no wgpu adapter" in proc.stderr
