"""Where and how a run executes: device choice, CPU threads, seeding, determinism, mixed precision."""
from __future__ import annotations

import contextlib
import os
import random
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA when a GPU is visible, else the CPU; ``cpu``/``cuda[:N]`` as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} was requested but no CUDA GPU is visible; use auto or cpu")
    return device


def use_threads(threads: int | None) -> int:
    """Set torch's CPU (intra-op) thread count when ``threads`` is given; return the count in effect.

    The count changes how CPU kernels split their sums, so the same run gives other
    (equally valid) floats at another count: bitwise repeatability holds at equal threads.
    It is process-wide, as torch keeps it.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU); optionally force deterministic kernels.

    With ``deterministic`` two CPU runs of one config at the same thread count
    (:func:`use_threads`) are bitwise identical. On CUDA,
    cuBLAS needs a fixed workspace for that, and kernels without a deterministic
    variant only warn instead of failing the run.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def rng_state() -> dict[str, Any]:
    """Every global RNG state, in types that ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(_as_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    # random.setstate insists on tuples; a round trip through some stores yields lists.
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on CUDA GPUs that support it, else fp16; a no-op on the CPU or when off."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype(device))


def amp_dtype(device: torch.device) -> torch.dtype:
    """The reduced precision used by :func:`autocast` on ``device``."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
