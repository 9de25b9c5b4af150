"""GPU discovery and sampling through NVML (nvidia-ml-py).

No driver, no library or no device all mean the same thing here: no GPU. Nothing raises.
"""

from __future__ import annotations

from typing import Any


def _nvml():
    """The initialised ``pynvml`` module, or None when NVML cannot be used on this machine."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError...
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpus() -> list[dict[str, Any]]:
    """``[{index, name, memory_total_mib}]`` for each visible GPU; ``[]`` without one."""
    nv = _nvml()
    if nv is None:
        return []
    try:
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            out.append({"index": i, "name": _text(nv.nvmlDeviceGetName(h)),
                        "memory_total_mib": round(mem.total / 2**20)})
        return out
    except Exception:
        return []
    finally:
        _shutdown(nv)


def gpu_model() -> str | None:
    """The model name of GPU 0 ("NVIDIA L40S"), or None without a GPU."""
    found = gpus()
    return found[0]["name"] if found else None


def sample() -> list[dict[str, Any]]:
    """One reading per GPU: ``index``, ``util`` (%), ``mem_used``/``mem_total`` (MiB), ``power_w``.
    ``[]`` without a GPU."""
    sampler = Sampler()
    try:
        return sampler.read()
    finally:
        sampler.close()


class Sampler:
    """Keeps NVML initialised between readings (the supervisor samples every few seconds)."""

    def __init__(self) -> None:
        self._nv = _nvml()

    @property
    def available(self) -> bool:
        return self._nv is not None

    def record(self) -> dict[str, Any] | None:
        """One ``system.jsonl`` line: ``{time, ts, gpus: [read()...]}``, every GPU in one sample (the
        store's system table reads this shape); None when nothing could be read."""
        gpus = self.read()
        if not gpus:
            return None
        from tina_core.rundir import RunDir

        return RunDir.system_record(gpus)

    def read(self) -> list[dict[str, Any]]:
        """One reading per GPU (as ``sample``); ``[]`` when NVML fails this time (a lost GPU, a
        driver hiccup): that sample is skipped and the next one tries again."""
        if self._nv is None:
            return []
        nv = self._nv
        out = []
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                try:
                    power = round(nv.nvmlDeviceGetPowerUsage(h) / 1000, 1)
                except Exception:
                    power = None
                out.append({"index": i, "util": nv.nvmlDeviceGetUtilizationRates(h).gpu,
                            "mem_used": round(mem.used / 2**20),
                            "mem_total": round(mem.total / 2**20), "power_w": power})
        except Exception:
            return []
        return out

    def close(self) -> None:
        if self._nv is not None:
            _shutdown(self._nv)
            self._nv = None


def _shutdown(nv) -> None:
    try:
        nv.nvmlShutdown()
    except Exception:
        pass
