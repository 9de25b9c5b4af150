"""`tina doctor` and the launch refusal. Each failure is made through the same check functions the
doctor calls, with other inputs: a driver version, a folder of installed packages written here (their
metadata, a torch ``version.py``, a vLLM library compiled here that links ``libcudart.so.13``), a PATH
without compilers, a 1 MiB tmpfs, a Hugging Face cache folder, a hub on the loopback address. NVML
is the stand-in of test_gpu (two L40S on an R535 driver); torch is really imported in the probe."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_full_disk import small_disk  # noqa: F401  (the 1 MiB tmpfs fixture)

from tina_core import doctor
from tina_core.recipe.loader import RECIPES_DIR, load_recipe
from tina_core.rundir import TinaError, create_run_dir, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
TINY = RECIPES_DIR / "tiny.yaml"
RS2 = RECIPES_DIR / "tina" / "open_rs2.yaml"
CHECKS = {"python", "venv", "pins", "compilers", "driver", "torch", "vllm", "nccl", "disk", "model", "data"}


def tina(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tina_core.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=300)


# --- the command ---------------------------------------------------------------------------------
def test_doctor_json_lists_its_checks_and_says_what_does_not_apply_on_cpu(tmp_path):
    out = tina(tmp_path, "doctor", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == CHECKS and report["ok"] is True
    assert report["recipe"].endswith("recipes/tiny.yaml") and "no NVIDIA GPU" in report["machine"]
    assert all(set(c) == {"name", "status", "found", "fix"} for c in report["checks"])
    # the GPU checks do not apply; the CPU path is still checked
    assert {n for n, c in checks.items() if c["status"] == "n/a"} >= {"driver", "compilers", "vllm", "nccl"}
    assert checks["torch"]["status"] == "ok" and "imports" in checks["torch"]["found"]
    assert checks["pins"]["status"] == "ok" and checks["disk"]["status"] == "ok"


def test_doctor_on_a_gpu_recipe_without_a_gpu_fails_and_says_how_to_fix_it(tmp_path):
    out = tina(tmp_path, "doctor", str(RS2))
    assert out.returncode == 1
    text = out.stdout
    assert text.startswith(f"tina doctor: {RS2} on this machine (no NVIDIA GPU")
    assert "FAIL  driver" in text and "FAIL  torch" in text and "FAIL  vllm" in text and "fix: make setup-gpu" in text
    assert "Idavidrein/gpqa" in text  # the gated evaluation data, whatever the token says
    assert text.rstrip().endswith("the launch would fail")


# --- Python, venv, compilers ---------------------------------------------------------------------
def test_python_311_only_and_why():
    assert doctor.check_python((3, 11, 9), "cpython", gpu=True).status == "ok"
    bad = doctor.check_python((3, 12, 3), "cpython", gpu=True)
    assert bad.status == "fail" and "CPython 3.12.3" in bad.found and "setuptools < 81" in bad.found
    assert "uv venv -p 3.11" in bad.fix and "deadsnakes" in bad.fix and "python3.11-venv" in bad.fix
    assert doctor.check_python((3, 10, 14), "cpython", gpu=False).status == "warn"  # a CPU box may get by
    assert doctor.check_venv("/usr", "/usr").status == "warn"
    assert doctor.check_venv(sys.prefix, sys.base_prefix).status == ("ok" if sys.prefix != sys.base_prefix else "warn")


def test_compilers_and_python_h(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    empty = tmp_path / "bin"
    empty.mkdir()
    bad = doctor.check_compilers(str(empty), str(tmp_path), gpu=True)
    assert bad.status == "fail" and "gcc" in bad.found and "g++" in bad.found and "Python.h" in bad.found
    assert "build-essential" in bad.fix and "python3.11-dev" in bad.fix
    for tool in ("gcc", "g++"):
        (empty / tool).write_text("#!/bin/sh\n")
        (empty / tool).chmod(0o755)
    (tmp_path / "Python.h").write_text("")
    assert doctor.check_compilers(str(empty), str(tmp_path), gpu=True).status == "ok"
    cpu = doctor.check_compilers("", str(tmp_path / "none"), gpu=False)
    assert cpu.status == "n/a" and "missing here" in cpu.found


# --- the driver against the wheels ---------------------------------------------------------------
def _dist(site: Path, name: str, version: str, *, requires=(), files=()) -> Path:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "RECORD").write_text("".join(f"{f},,\n" for f in files))
    return info


def _shared_object(out: Path, *, soname: str | None = None, needs: tuple[Path, ...] = ()) -> Path:
    """A real ELF shared object compiled here, linked against ``needs`` (its NEEDED entries)."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc here to build a shared object")
    src = out.with_suffix(".c")
    src.write_text("int tina_doctor_symbol(void) { return 1; }\n")
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(src)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    for lib in needs:
        cmd += ["-Wl,--no-as-needed", f"-L{lib.parent}", f"-l:{lib.name}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


@pytest.fixture
def cuda13_site(tmp_path) -> Path:
    """The installed packages of a CUDA 13 box as the wheels lay them out: torch 2.13.0 (its
    version.py, its requirements) and vllm 0.31.0 with a compiled ``_C.abi3.so`` that needs
    ``libcudart.so.13`` and a library no box has (so it never loads)."""
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "version.py").write_text("from typing import Optional\n__version__ = '2.13.0'\n"
                                               "cuda: Optional[str] = '13.0'\n")
    _dist(site, "torch", "2.13.0", requires=["filelock", 'cuda-toolkit[cublas,cudart]==13.0.3; platform_system == "Linux"',
                                              'nvidia-nccl-cu13==2.29.7; platform_system == "Linux"'])
    libs = tmp_path / "libs"
    libs.mkdir()
    cudart = _shared_object(libs / "libcudart.so.13", soname="libcudart.so.13")
    gone = _shared_object(libs / "libtina_doctor_gone.so.1", soname="libtina_doctor_gone.so.1")
    (site / "vllm").mkdir()
    (site / "vllm" / "__init__.py").write_text("")
    _shared_object(site / "vllm" / "_C.abi3.so", needs=(cudart, gone))
    _dist(site, "vllm", "0.31.0", files=["vllm/__init__.py", "vllm/_C.abi3.so"])
    return site


def test_needed_libraries_reads_what_readelf_reads(cuda13_site):
    lib = cuda13_site / "vllm" / "_C.abi3.so"
    assert "libcudart.so.13" in doctor.needed_libraries(lib)
    if shutil.which("readelf"):
        listed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
        assert doctor.needed_libraries(lib) == [line.split("[", 1)[1].split("]")[0]
                                                for line in listed.splitlines() if "(NEEDED)" in line]
    assert doctor.needed_libraries(cuda13_site / "torch" / "version.py") == []  # not an ELF file


def test_what_the_wheels_need_is_read_from_the_wheels(cuda13_site, tmp_path):
    need = doctor.cuda_need([str(cuda13_site)])
    assert need.major == 13 and need.driver == (580, "580.65.06") and need.torch == "2.13.0"
    assert any("torch.version.cuda 13.0" in s for s in need.sources)
    assert any("cuda-toolkit[cublas,cudart]==13.0.3" in s for s in need.sources)
    assert any("vllm 0.31.0: _C.abi3.so needs libcudart.so.13" in s for s in need.sources)
    cu12 = tmp_path / "cu12"
    _dist(cu12, "torch", "2.7.1", requires=['nvidia-cuda-runtime-cu12==12.6.77; platform_system == "Linux"'])
    assert doctor.cuda_need([str(cu12)]).major == 12
    cpu = tmp_path / "cpu"
    (cpu / "torch").mkdir(parents=True)
    (cpu / "torch" / "version.py").write_text("cuda: Optional[str] = None\n")
    _dist(cpu, "torch", "2.13.0+cpu", requires=["filelock"])
    assert doctor.cuda_need([str(cpu)]).major is None


def test_the_driver_table():
    """CUDA's minor version compatibility: a build for X.y runs on X.0's first driver branch."""
    assert {k: v[0] for k, v in doctor.DRIVER_FOR_CUDA.items()} == {13: 580, 12: 525, 11: 450}
    cuda13 = doctor.CudaNeed(13, ("torch 2.13.0: torch.version.cuda 13.0",), "2.13.0")
    for driver, status in [("535.104.05", "fail"), ("575.57.08", "fail"), ("580.65.06", "ok"), ("590.44.01", "ok")]:
        assert doctor.check_driver(driver, cuda13, gpu=True).status == status, driver
    old = doctor.check_driver("535.104.05", cuda13, gpu=True)
    assert "older than R580" in old.found and "torch sees none" in old.found
    assert "R580" in old.fix and "nvidia-driver-580" in old.fix and "CUDA Version: 13.0" in old.fix
    assert doctor.check_driver("535.104.05", doctor.CudaNeed(12, ("x",)), gpu=True).status == "ok"
    assert doctor.check_driver("470.256.02", doctor.CudaNeed(12, ("x",)), gpu=True).status == "fail"
    none = doctor.check_driver(None, cuda13, gpu=True, why_none="NVML: NVMLError_LibraryNotFound")
    assert none.status == "fail" and "NVMLError_LibraryNotFound" in none.found
    cpu_wheels = doctor.check_driver("580.65.06", doctor.CudaNeed(None, (), "2.13.0+cpu"), gpu=True)
    assert cpu_wheels.status == "fail" and "CPU build" in cpu_wheels.found
    assert doctor.check_driver(None, cuda13, gpu=False).status == "n/a"
    assert doctor.check_driver("580.65.06", doctor.CudaNeed(14, ("x",)), gpu=True).status == "warn"  # unknown major


# --- torch and vLLM in a child process -----------------------------------------------------------
def test_torch_is_imported_in_a_child_and_compared_with_nvml():
    result = doctor.probe("torch")
    assert result["version"].startswith("2.") and "error" not in result
    assert doctor.check_torch(result, 0, gpus=0).status == "ok"
    blind = doctor.check_torch({"version": "2.13.0", "cuda": "13.0", "devices": 0}, 2, gpus=2)
    assert blind.status == "fail" and "sees 0 GPU(s) where NVML sees 2" in blind.found
    assert doctor.check_torch({"version": "2.13.0", "cuda": "13.0", "devices": 2}, 2, gpus=2).status == "ok"
    crashed = doctor.check_torch({"error": "importing torch crashed (signal 11)"}, 2, gpus=2)
    assert crashed.status == "fail" and "signal 11" in crashed.found


def test_a_vllm_library_that_does_not_load_is_reported_not_fatal(cuda13_site):
    result = doctor.probe("vllm", [str(cuda13_site)])
    assert result["installed"] and result["modules"] == ["vllm._C"] and result["loaded"] == []
    check = doctor.check_vllm(result, gpu=True, needed=True)
    assert check.status == "fail" and "vllm._C does not load" in check.found
    assert "libtina_doctor_gone.so.1: cannot open shared object file" in check.found
    assert doctor.check_vllm({"installed": False}, gpu=True, needed=True).status == "fail"
    assert doctor.check_vllm({"installed": False}, gpu=False, needed=False).status == "n/a"
    ok = {"installed": True, "name": "vllm", "version": "0.31.0", "modules": ["vllm._C"], "loaded": ["vllm._C"]}
    assert doctor.check_vllm(ok, gpu=True, needed=True).status == "ok"


# --- NCCL against the link -----------------------------------------------------------------------
def test_nccl_settings_against_the_gpus_link(monkeypatch):
    from test_gpu import FakeNVML

    tina_env = {"NCCL_P2P_DISABLE": "1", "NCCL_SHM_DISABLE": "1"}
    nvlink = doctor.check_nccl("nvlink", tina_env, gpus=2)
    assert nvlink.status == "warn" and "NCCL_P2P_DISABLE=0" in nvlink.fix
    assert doctor.check_nccl("nvlink", {}, gpus=2).status == "ok"
    assert doctor.check_nccl("pcie (one PCIe host bridge)", tina_env, gpus=2).status == "ok"
    assert doctor.check_nccl("pcie (one PCIe host bridge)", {"NCCL_P2P_DISABLE": "0"}, gpus=2).status == "warn"
    assert doctor.check_nccl("nvlink", tina_env, gpus=1).status == "n/a"
    # the link as NVML reports it
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    found = doctor.read_gpus()
    assert (found.count, found.driver, found.link) == (2, "535.104.05", "pcie (one PCIe host bridge)")
    fake.nvlink = True
    assert doctor.read_gpus().link == "nvlink"


# --- disk, model, data, pins ---------------------------------------------------------------------
def test_disk_for_the_checkpoints_the_ring_and_a_merged_model(small_disk, tmp_path):  # noqa: F811
    from tina_core.train import snapshots

    rs2 = load_recipe(RS2)
    need = doctor.disk_need(rs2)
    adapter = snapshots.adapter_bytes(rs2)
    kept = len(range(rs2.save_steps, rs2.stop_at_step + 1, rs2.save_steps))  # 850 / 50: 17 saves, all kept
    assert need.total == int(kept * snapshots.CHECKPOINT_PER_ADAPTER * adapter) + 18 * adapter + 1_777_088_000 * 2
    full = doctor.check_disk(need, small_disk / "runs")
    assert full.status == "fail" and "17 checkpoints" in full.found and "ring of 16 + 2 pins" in full.found
    assert "TINA_HOME" in full.fix
    assert doctor.check_disk(doctor.disk_need(load_recipe(TINY)), tmp_path / "runs").status == "ok"


def _hf_cache(root: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face hub cache as huggingface_hub lays it out: blobs, refs/main, a snapshot of links."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = folder / "blobs" / f"{abs(hash(name)):x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return root


def test_the_base_model_in_the_hf_cache(tmp_path):
    rs2 = load_recipe(RS2)
    missing = doctor.check_model(rs2, tmp_path / "empty", offline=False)
    assert missing.status == "warn" and "hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B" in missing.fix
    assert doctor.check_model(rs2, tmp_path / "empty", offline=True).status == "fail"
    cache = _hf_cache(tmp_path / "hub", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
                      {"config.json": b"{}", "model.safetensors": b"\0" * 64})
    assert doctor.check_model(rs2, cache, offline=True).status == "ok"
    nowhere = load_recipe(RS2, [f"model.name_or_path={tmp_path / 'no-model'}"])
    assert doctor.check_model(nowhere).status == "fail"
    assert doctor.check_model(load_recipe(TINY)).status == "ok"


class _Hub(http.server.BaseHTTPRequestHandler):
    """The hub's auth-check on the loopback address: ``answer`` is (status, X-Error-Code)."""
    answer = (200, None)
    asked: list[str] = []

    def do_GET(self):
        _Hub.asked.append(f"{self.path} {self.headers.get('authorization', '')[:6]}")
        status, code = self.answer
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def hub(monkeypatch):
    # huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported: in this test process
    # that may have been under a test that sets it (the `home` fixture does), so the hub here is
    # asked as on a box without it
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_gated_evaluation_data_and_the_token(hub):
    server, endpoint = hub
    six = ["aime24", "aime25", "amc23", "math_500", "minerva", "gpqa:diamond"]
    assert doctor.gated_datasets(six) == {"gpqa:diamond": "Idavidrein/gpqa"}
    assert doctor.check_data(["aime24", "arith"], None).status == "ok"
    no_token = doctor.check_data(six, None)
    assert no_token.status == "warn" and "gated dataset" in no_token.found and "no HF token" in no_token.found
    assert "https://huggingface.co/datasets/Idavidrein/gpqa" in no_token.fix and "hf auth login" in no_token.fix
    assert doctor.check_data(six, None, evaluating=True).status == "fail"
    token = "hf_" + "x" * 30
    _Hub.answer = (200, None)
    wait = 600.0  # the hub's answer decides, never how loaded this machine is
    assert doctor.check_data(six, token, endpoint=endpoint, timeout=wait).status == "ok"
    assert _Hub.asked[-1].startswith("/api/datasets/Idavidrein/gpqa/auth-check Bearer")
    _Hub.answer = (403, "GatedRepo")
    gated = doctor.check_data(six, token, endpoint=endpoint, evaluating=True, timeout=wait)
    assert gated.status == "fail" and "has not accepted the terms" in gated.found and token not in gated.found
    # a hub that cannot be reached: could not check, said so
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unknown = doctor.check_data(six, token, endpoint=closed, timeout=wait)
    assert unknown.status == "warn" and "could not be checked (ConnectError)" in unknown.found


def test_the_pinned_versions_as_installed(tmp_path):
    pins_file = tmp_path / "gpu.txt"
    pins_file.write_text("# header\ntorch==2.13.0\n    # via tina\ntrl==1.16.0\nvllm==0.31.0\ndeepspeed==0.19.8\n"
                         "transformers==5.17.0\nnvidia-nccl-cu13==2.29.7\n")
    pins = doctor.pinned_versions(pins_file)
    assert pins["nvidia-nccl-cu13"] == "2.29.7" and len(pins) == 6
    site = tmp_path / "site"
    for name, version in [("torch", "2.13.0+cpu"), ("trl", "1.16.0"), ("transformers", "5.17.0")]:
        _dist(site, name, version)
    installed = doctor.installed_versions([str(site)])
    assert installed["torch"] == "2.13.0+cpu"
    cpu = doctor.check_pins(pins, installed, gpu=False, needed=("torch", "trl"))
    assert cpu.status == "ok" and "CUDA-only ones absent" in cpu.found
    gpu = doctor.check_pins(pins, installed, gpu=True, needed=("torch", "trl", "vllm", "deepspeed"))
    assert gpu.status == "fail" and gpu.found == "not installed: vllm, deepspeed"
    _dist(site, "vllm", "0.30.0")
    _dist(site, "deepspeed", "0.19.8")
    drift = doctor.check_pins(pins, doctor.installed_versions([str(site)]), gpu=True, needed=("vllm", "deepspeed"))
    assert drift.status == "warn" and "vllm 0.30.0 (pinned 0.31.0)" in drift.found and "nvidia-nccl-cu13" in drift.found
    assert doctor.pinned_versions(doctor.PINS_FILE)["vllm"] == "0.31.0"  # the shipped set


# --- the launch refusal --------------------------------------------------------------------------
@pytest.fixture
def two_l40s_r535(monkeypatch):
    from test_gpu import FakeNVML

    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML())


def test_tina_run_refuses_a_gpu_launch_with_the_doctor_s_words(two_l40s_r535, cuda13_site, tmp_path, monkeypatch):
    """Two L40S on an R535 driver (NVML counts both) with CUDA 13 wheels: the launch would start and
    fail on both ranks. `tina run` refuses before a run directory exists; --force goes on."""
    from typer.testing import CliRunner

    from tina_core.cli.commands import app

    monkeypatch.syspath_prepend(str(cuda13_site))  # the wheels this box has installed
    home = tmp_path / "home"
    res = CliRunner().invoke(app, ["--home", str(home), "run", str(RS2)])
    assert res.exit_code != 0 and isinstance(res.exception, TinaError)
    text = str(res.exception)
    assert "the launch would fail on this machine (2 x NVIDIA L40S, driver 535.104.05)" in text
    assert "driver: driver 535.104.05 is older than R580" in text and "nvidia-driver-580" in text
    assert "torch: " in text and "where NVML sees 2" in text
    assert "vllm: " in text and "--force" in text
    assert not (home / "runs").exists()
    # --force: the same words as a warning, and no refusal
    doctor.refuse_launch(load_recipe(RS2), home, force=True)
    # a CPU recipe is never checked
    doctor.refuse_launch(load_recipe(TINY), home)


def test_tina_eval_on_gpus_is_refused_where_the_evaluation_would_fail(tiny_run, tmp_path):
    """`tina eval --gpus` on this GPU-less box: no driver, torch sees no GPU, no vLLM. Refused
    before anything is queued; the CPU evaluation is not checked."""
    from typer.testing import CliRunner

    from tina_core.cli.commands import app

    home = tmp_path / "home"
    rd = create_run_dir(home, "evaluated")
    rd.recipe.write_text(tiny_run.recipe.read_text())
    write_json_atomic(rd.run_json, {**tiny_run.info(), "run_id": rd.run_id})
    res = CliRunner().invoke(app, ["--home", str(home), "eval", rd.run_id, "--checkpoint", "base",
                                   "--tasks", "aime24", "--gpus", "0"])
    assert res.exit_code != 0 and "the evaluation would fail" in str(res.exception)
    assert "driver: " in str(res.exception) and "vllm: vllm is not installed" in str(res.exception)
    assert not [e for e in rd.read_events() if "eval_id" in e]
