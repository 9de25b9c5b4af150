"""The trainer's exact command line and environment.

CPU recipes (``launch.gpus: 0``) run ``python -m tina_core.train RUN_DIR``; GPU recipes run the same
module under ``accelerate launch`` with DeepSpeed ZeRO-2 (Tina's launcher, §1 of the recipe notes),
and so do CPU recipes with ``launch.processes: N`` (N gloo ranks, recipes/accelerate/cpu_ranks.yaml):
the same wrapper, the same torch elastic agent.

The wrapper is this module's ``__main__``, so that a stop request reaches the ranks intact. The
supervisor signals the launcher only; torch's agent starts each rank in a session of its own, so
no group signal reaches them either. Left alone, the agent would take SIGTERM itself (torch 2.13
overwrites ``TORCHELASTIC_SIGNALS_TO_HANDLE`` from its ``--signals_to_handle`` option, whose
environment form is ``PET_SIGNALS_TO_HANDLE``) and kill the ranks after its shutdown timeout, mid-step
or mid-save. Instead ``PET_SIGNALS_TO_HANDLE`` leaves SIGTERM out, the wrapper passes it on to each
rank, the ranks agree on the step, save and exit 75, and the wrapper exits with their common code.
A rank dies with its launcher (``die_with_parent``), so killing the launcher's group leaves no rank.
Light: no torch here; NVML is asked only by ``check_hardware``.
"""

from __future__ import annotations

import os
import signal
import sys

from tina_core.recipe.loader import Recipe, RecipeError, accelerate_config_path
from tina_core.credentials import MASK
from tina_core.rundir import RunDir, TinaError

DEFAULT_PORT = 29500


# The elastic agent handles these itself (its default also has SIGTERM, which is the ranks' here).
AGENT_SIGNALS = "SIGINT,SIGHUP,SIGQUIT"


def launch_command(run_dir: RunDir, recipe: Recipe) -> list[str]:
    entry = ["-m", "tina_core.train", str(run_dir.path)]
    if not recipe.distributed:
        return [sys.executable, *entry]
    machines = recipe.num_machines
    cmd = [sys.executable, "-m", "tina_core.train.launcher", "accelerate", "launch",
           "--config_file", str(accelerate_config_path(recipe)),
           # accelerate counts processes over all machines; launch.gpus (or .processes) is per machine
           "--num_processes", str(recipe.processes * machines),
           "--main_process_port", str(_port(recipe, machines))]
    if machines > 1:
        cmd += ["--num_machines", str(machines)]
        # Per-node values: from the recipe (--set launch.machine_rank=1) or this node's environment.
        rank = recipe.get("launch.machine_rank", os.environ.get("TINA_MACHINE_RANK"))
        ip = recipe.get("launch.main_process_ip", os.environ.get("TINA_MAIN_PROCESS_IP"))
        if rank is None or ip is None:
            raise RecipeError(f"{recipe.source}: launch.machine_rank / launch.main_process_ip: a multi-node "
                              "launch needs both (--set launch.machine_rank=0 --set launch.main_process_ip=10.0.0.1, "
                              "or env TINA_MACHINE_RANK / TINA_MAIN_PROCESS_IP)")
        cmd += ["--machine_rank", str(rank), "--main_process_ip", str(ip)]
    return cmd + entry


def _port(recipe: Recipe, machines: int) -> int:
    """launch.main_process_port; unset, one machine picks a free one (0: accelerate's choice, so
    runs side by side never collide), several share 29500."""
    port = recipe.get("launch.main_process_port")
    return int(port) if port is not None else (DEFAULT_PORT if machines > 1 else 0)


def launch_env(recipe: Recipe, base: dict[str, str] | None = None) -> dict[str, str]:
    """The trainer's environment: ``base`` (default os.environ), the recipe's ``launch.env`` and its
    credentials (``Recipe.secret_env``: grpo.hub_token as HF_TOKEN...). A credential a snapshot
    withheld (``***``) is not set here: its value comes from ``base``, where the supervisor was
    given it."""
    env = dict(os.environ if base is None else base)
    env.update({str(k): str(v) for k, v in (recipe.get("launch.env") or {}).items() if v != MASK})
    env.update(recipe.secret_env)
    if recipe.gpus > 0 and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(recipe.gpus))
    env["PYTHONUNBUFFERED"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    if recipe.distributed:
        env["PET_SIGNALS_TO_HANDLE"] = AGENT_SIGNALS  # SIGTERM is the ranks' (see top)
    if recipe.distributed and recipe.gpus == 0:
        env["ACCELERATE_USE_CPU"] = "true"  # the ranks' accelerate state: CPU, gloo
    return env


def visible_gpus() -> tuple[int, str]:
    """(GPU count, why) as NVML sees it; no driver or library means 0."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            n = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
        return n, "nvidia-ml-py"
    except ImportError:
        return 0, "nvidia-ml-py is not installed"
    except Exception as e:  # pynvml.NVMLError_LibraryNotFound / DriverNotLoaded ...
        return 0, f"nvidia-ml-py found no driver: {type(e).__name__}"


def check_hardware(recipe: Recipe) -> None:
    if recipe.gpus == 0:
        return
    have, why = visible_gpus()
    if have < recipe.gpus:
        raise TinaError(f"recipe asks for {recipe.gpus} GPUs; this machine has {have} ({why}). "
                        f"On CPU use recipes/tiny.yaml or --set launch.gpus=0")


def gpu_memory_here(recipe: Recipe) -> tuple[int, str] | None:
    """(bytes, name) of the smallest GPU this machine would train on, or None without GPUs."""
    from tina_core import gpu

    found = gpu.gpus()[:max(1, recipe.gpus)]
    if not found:
        return None
    smallest = min(found, key=lambda g: g["memory_total_mib"])
    return smallest["memory_total_mib"] * 2**20, smallest["name"]


def check_memory(recipe: Recipe, *, force: bool = False) -> None:
    """Refuse a GPU recipe whose per-GPU estimate (tina_core.train.memory) exceeds the GPUs it would
    use, with the numbers; ``force`` launches anyway. Heavy (builds the real GRPOConfig): call it
    after validation, on a machine with the recipe's GPUs."""
    if recipe.gpus == 0:
        return
    here = gpu_memory_here(recipe)
    if here is None:
        return
    from tina_core.recipe.configs import resolved_grpo
    from tina_core.train import memory

    est = memory.estimate(recipe, resolved_grpo(recipe), here[0])
    if est is None or est.fits:
        return
    message = (f"{recipe.source}: this recipe needs an estimated {est.total / memory.GIB:.1f} GiB per GPU; "
               f"{here[1]} has {here[0] / memory.GIB:.1f} GiB:\n  " + "\n  ".join(est.lines())
               + "\nLower grpo.per_device_train_batch_size (raise gradient_accumulation_steps to keep the batch), "
                 "grpo.vllm_gpu_memory_utilization or the lengths, set grpo.vllm_enable_sleep_mode=true, "
                 "or launch anyway with --force")
    if not force:
        raise TinaError(message)
    print(f"tina: warning: {message.splitlines()[0]} (--force: launching anyway)", file=sys.stderr)


def _pass_sigterm_to_ranks(signum=None, frame=None) -> None:
    """SIGTERM for the launcher is for the ranks, its children (each in a session of its own)."""
    import psutil

    for child in psutil.Process().children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def die_with_parent() -> None:
    """Under the launcher, ask the kernel to SIGKILL this rank when the launcher dies (a killed
    launcher would otherwise leave ranks training on, in their own sessions, out of reach of the
    supervisor's group kill). Linux only; a no-op elsewhere or outside the launcher."""
    if not os.environ.get("TORCHELASTIC_RUN_ID") or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher went before the request took hold
        os._exit(128 + signal.SIGKILL)


def _accelerate_launch(argv: list[str]) -> None:
    """``python -m tina_core.train.launcher accelerate launch ARGS``: accelerate's launcher, with
    SIGTERM passed on to the ranks (see the module's docstring)."""
    if argv[:2] != ["accelerate", "launch"]:
        raise SystemExit("usage: python -m tina_core.train.launcher accelerate launch [accelerate launch arguments]")
    signal.signal(signal.SIGTERM, _pass_sigterm_to_ranks)
    import subprocess

    from accelerate.commands.launch import main

    sys.argv = ["accelerate launch", *argv[2:]]
    try:
        main()
    except subprocess.CalledProcessError as e:  # one process: accelerate's simple launcher
        sys.exit(e.returncode)
    except Exception as e:  # torch elastic's ChildFailedError: pass the ranks' exit code on
        codes = {f.exitcode for f in getattr(e, "failures", {}).values()}
        if len(codes) == 1:
            code = codes.pop()
            sys.exit(code if code >= 0 else 128 - code)  # killed by a signal: the shell's convention
        raise


if __name__ == "__main__":
    _accelerate_launch(sys.argv[1:])
