"""requirements/gpu.txt (the resolved GPU install set) stays in sync with pyproject.toml: every
dependency of the project and of its gpu/test extras is pinned there, at a version that satisfies
pyproject's specifier, and the torch pin is the CPU wheel's release so both boxes share versions."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements/gpu.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\],]+)==([^\s;]+)", line)
        if m:
            pins[canonicalize_name(m.group(1).split("[")[0])] = m.group(2)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("gpu", "test"):
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_every_dependency_is_pinned_within_its_range():
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements/gpu.txt: re-resolve it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements/gpu.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )


def test_gpu_set_carries_the_gpu_stack_and_the_cpu_torch_release():
    pins = _pins()
    assert "vllm" in pins and "deepspeed" in pins
    makefile = (REPO / "Makefile").read_text()
    cpu_torch = re.search(r"TORCH\s*\?=\s*torch==([\d.]+)", makefile).group(1)
    assert pins["torch"] == cpu_torch


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    pins = _pins()
    for name in ["transformers", "trl", "peft", "accelerate", "lighteval", "math-verify", "duckdb", "textual"]:
        assert version(name) == pins[canonicalize_name(name)], name
