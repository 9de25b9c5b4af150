"""GPU sampling into system.jsonl. On this GPU-less machine the real NVML finds nothing and nothing is
written; the record's shape and NVML failures mid-run are checked against a stand-in for the NVML
library (it stands in for the hardware; the sampler, the supervisor and the store are the real ones)."""

from __future__ import annotations

import datetime as dt
import sys
import time
import types

import pytest

from tina_core import gpu
from tina_core.supervise import supervisor
from tina_core.rundir import create_run_dir, iter_jsonl, write_json_atomic
from tina_core.store.index import Store

GPU_FIELDS = {"index", "util", "mem_used", "mem_total", "power_w"}


class FakeNVML(types.ModuleType):
    """Two L40S as ``pynvml`` reports them (bytes, milliwatts, percent). ``failing`` names NVML calls
    that raise ``NVMLError`` until it is emptied, as a lost GPU or a driver hiccup does."""

    class NVMLError(Exception):
        pass

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.failing: set[str] = set()
        self.inits = self.shutdowns = 0

    def _call(self, name: str) -> None:
        if name in self.failing:
            raise self.NVMLError(f"{name}: GPU is lost")

    def nvmlInit(self):
        self._call("nvmlInit")
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        self._call("nvmlDeviceGetCount")
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA L40S"

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(total=46068 * 2**20, used=(1000 + h) * 2**20)

    def nvmlDeviceGetUtilizationRates(self, h):
        self._call("nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(gpu=90 - 10 * h, memory=40)

    def nvmlDeviceGetPowerUsage(self, h):
        self._call("nvmlDeviceGetPowerUsage")
        return 251_300 + h * 1000

    # the driver and the link between the GPUs (tina doctor): an R535 driver (CUDA 12.2) on a PCIe
    # box, as many rented images have; ``driver``/``nvlink`` change them
    driver = "535.104.05"
    nvlink = False
    NVML_NVLINK_MAX_LINKS = 18

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlDeviceGetNvLinkState(self, h, link):
        if not self.nvlink:
            raise self.NVMLError("Not Supported")
        return 1

    def nvmlDeviceGetTopologyCommonAncestor(self, a, b):
        return 30  # NVML_TOPOLOGY_HOSTBRIDGE: both GPUs under one PCIe host bridge


@pytest.fixture
def nvml(monkeypatch) -> FakeNVML:
    fake = FakeNVML()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def _gpu_run(tmp_path):
    """A run directory whose run.json says it trains on 2 GPUs (nothing is started)."""
    rd = create_run_dir(tmp_path / "home", "gpu")
    write_json_atomic(rd.run_json, {"run_id": rd.run_id, "name": "gpu", "device": "NVIDIA L40S", "gpu_count": 2,
                                    "gpu_hour_usd": 1.0, "command": ["true"]})
    return rd


def test_record_shape(nvml):
    sampler = gpu.Sampler()
    before = time.time()
    rec = sampler.record()
    assert set(rec) == {"time", "ts", "gpus"}
    assert before <= rec["ts"] <= time.time()
    assert dt.datetime.fromisoformat(rec["time"]).timestamp() == pytest.approx(rec["ts"], abs=0.01)
    assert [set(g) for g in rec["gpus"]] == [GPU_FIELDS, GPU_FIELDS]
    assert rec["gpus"] == [{"index": 0, "util": 90, "mem_used": 1000, "mem_total": 46068, "power_w": 251.3},
                           {"index": 1, "util": 80, "mem_used": 1001, "mem_total": 46068, "power_w": 252.3}]
    sampler.close()
    assert (nvml.inits, nvml.shutdowns) == (1, 1)  # initialised once for every reading, shut down once


def test_nvml_errors_mid_run_skip_samples_and_never_raise(nvml):
    sampler = gpu.Sampler()
    assert sampler.record() is not None
    nvml.failing = {"nvmlDeviceGetPowerUsage"}  # some boards cannot read power: the rest still counts
    assert [g["power_w"] for g in sampler.record()["gpus"]] == [None, None]
    for call in ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetCount"):
        nvml.failing = {call}
        assert sampler.record() is None and sampler.read() == []
    nvml.failing = set()  # the driver is back: so are the samples
    assert sampler.record()["gpus"][1]["util"] == 80


def test_supervisor_samples_into_system_jsonl_through_errors(nvml, tmp_path, monkeypatch):
    monkeypatch.setattr(supervisor, "GPU_SAMPLE_S", 0.0)
    rd = _gpu_run(tmp_path)
    sup = supervisor.Supervisor(rd)
    sup.sample_gpus()
    nvml.failing = {"nvmlDeviceGetCount"}
    sup.sample_gpus()  # nothing to write, nothing raised: supervision goes on
    nvml.failing = set()
    sup.sample_gpus()
    lines = list(iter_jsonl(rd.system))
    assert len(lines) == 2 and all(set(r) == {"time", "ts", "gpus"} and len(r["gpus"]) == 2 for r in lines)
    store = Store(rd.path.parent.parent)
    store.ingest()
    assert [(g["index"], g["util"], g["power_w"]) for g in store.system_latest(rd.run_id)] == [
        (0, 90.0, 251.3), (1, 80.0, 252.3)]


def test_without_a_gpu_nothing_is_sampled(tmp_path):
    """The real NVML on this machine: no driver, no device, no system.jsonl even for a GPU run."""
    if gpu.gpus():
        pytest.skip("this machine has GPUs")
    assert gpu.Sampler().record() is None and gpu.sample() == []
    rd = _gpu_run(tmp_path)
    supervisor.Supervisor(rd).sample_gpus()
    assert not rd.system.exists()
