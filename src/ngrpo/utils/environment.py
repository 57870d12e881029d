"""What a result was made with: library versions, CPU and platform (for build records and reports).

Floating-point results here (the base model's 800 supervised steps, every sampled evaluation) move
with the library versions and the CPU's kernels, so every record that a number depends on names
them: the shipped base model's build record and the demo's report.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata

# Distributions whose versions are recorded (those a result can depend on), in this order.
LIBRARIES = (
    "torch", "transformers", "accelerate", "tokenizers", "safetensors", "numpy", "math-verify",
    "peft",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    """Installed version of each of `LIBRARIES` (`"missing"` when one is not installed)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


def cpu_model() -> str:
    """The CPU's model name (`/proc/cpuinfo` on Linux, else the platform's processor string)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """Machine, CPU, Python and library versions as one flat dict."""
    import torch

    return {
        "machine": platform.machine(), "processor": cpu_model(), "cpus": os.cpu_count(),
        "python": platform.python_version(), **library_versions(),
        "cuda": torch.cuda.is_available(), "platform": platform.platform(),
    }  # fmt: skip
