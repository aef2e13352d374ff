"""Helpers shared by the benchmark scripts: machine description, timing, peak memory.

Import from a script in this folder with ``from common import ...`` (running ``python
benchmarks/<script>.py`` puts ``benchmarks/`` on ``sys.path``).

Timing: :func:`time_round_robin` runs several step functions in turn (A, B, C, A, B, C, ...), so a load
change on a shared machine hits every variant alike, and synchronises the device around each call.

Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats`` (bytes held by
  live tensors; the caching allocator's reserve is not counted).
* CPU (Linux): the peak resident set size of the process. :func:`measure_peak_rss` resets the kernel's
  high-water mark (``/proc/self/clear_refs``, value 5), runs the function and reads ``VmHWM`` from
  ``/proc/self/status`` (the number ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` reports too, which
  is the fallback where ``/proc`` is unavailable — then it is the peak of the whole process so far).
  :func:`return_freed_memory_to_os` first asks glibc to serve large allocations with their own mappings
  and to trim its free lists, so resident memory follows the live tensors instead of malloc's cache.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


# ----------------------------------------------------------------------------------------- machine
def cpu_model_name() -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> Optional[Tuple[float, float, float]]:
    """The 1, 5 and 15 minute load averages (``os.getloadavg``), or None where unsupported."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return None


def usable_cpu_count() -> int:
    """CPUs this process may run on (affinity mask), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_description(device: torch.device) -> Dict[str, object]:
    """What the numbers were measured on: CPU model and cores, torch, CUDA device, load average."""
    description: Dict[str, object] = {
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        description.update({
            "cuda_device": props.name,
            "cuda_memory_gib": round(props.total_memory / GIB, 1),
            "cuda_capability": f"{props.major}.{props.minor}",
            "cuda_runtime": torch.version.cuda,
        })
    return description


def format_machine(description: Mapping[str, object]) -> str:
    line = (f"machine: {description['cpu']}, {description['logical_cpus']} logical CPUs "
            f"({description['usable_cpus']} usable), torch {description['torch']} with "
            f"{description['torch_threads']} threads, python {description['python']}")
    if "cuda_device" in description:
        line += (f"; GPU {description['cuda_device']} ({description['cuda_memory_gib']} GiB, "
                 f"sm {description['cuda_capability']}, CUDA {description['cuda_runtime']})")
    return line


# ------------------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(steps: Mapping[str, Callable[[], object]], repeats: int, warmup: int,
                     device: torch.device) -> Dict[str, List[float]]:
    """Run ``warmup`` untimed rounds, then ``repeats`` timed rounds of every step function in turn.

    Returns {name: [milliseconds of each timed call]}; each call is bracketed by device
    synchronisations, so the time is the work the call queued, not only its launch.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarize_times(milliseconds: List[float]) -> Dict[str, float]:
    """min / median / mean of a list of timings (ms)."""
    return {
        "min_ms": min(milliseconds),
        "median_ms": statistics.median(milliseconds),
        "mean_ms": statistics.fmean(milliseconds),
    }


# ------------------------------------------------------------------------------------------ memory
def current_rss_bytes() -> Optional[int]:
    """Resident set size of this process now (Linux /proc/self/statm), else None."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process; False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size (bytes): VmHWM where /proc exists, else getrusage's ru_maxrss."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * KIB
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if platform.system() == "Darwin" else maxrss * KIB  # bytes on macOS, KiB on Linux


def return_freed_memory_to_os(mmap_threshold: int = MIB) -> bool:
    """glibc only: serve allocations ≥ ``mmap_threshold`` with their own mappings (unmapped on free) and
    trim malloc's free lists, so the resident set follows the live tensors. False where not glibc.

    Changing the threshold disables glibc's dynamic threshold for the rest of the process: call it
    after the timing runs, right before the memory measurements.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3  # from <malloc.h>
        libc.mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(mmap_threshold))
        libc.malloc_trim(ctypes.c_size_t(0))
        return True
    except (OSError, AttributeError):
        return False


def measure_peak_rss(function: Callable[[], object]) -> Dict[str, object]:
    """Run ``function`` once and report the process's peak resident set size during the call.

    Returns {"peak_bytes", "before_bytes", "increase_bytes", "method"}; ``increase_bytes`` = peak minus
    the resident size just before the call (the call's activations and temporaries).
    """
    gc.collect()
    before = current_rss_bytes()
    reset = reset_peak_rss()
    function()
    peak = peak_rss_bytes()
    if reset:
        method = "peak RSS during the step (VmHWM after resetting it via /proc/self/clear_refs)"
    else:
        method = "peak RSS of the whole process so far (getrusage ru_maxrss; no per-step reset possible)"
    return {
        "peak_bytes": peak,
        "before_bytes": before,
        "increase_bytes": (peak - before) if (reset and before is not None) else None,
        "method": method,
    }


def measure_peak_cuda(function: Callable[[], object], device: torch.device) -> Dict[str, object]:
    """Run ``function`` once; report ``torch.cuda.max_memory_allocated`` during it and what was
    allocated before it (bytes)."""
    gc.collect()
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    function()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {
        "peak_bytes": peak,
        "before_bytes": before,
        "increase_bytes": peak - before,
        "method": "torch.cuda.max_memory_allocated during the step (live tensors, not the allocator's reserve)",
    }


__all__ = [
    "GIB", "KIB", "MIB", "cpu_model_name", "current_rss_bytes", "format_machine", "load_average",
    "machine_description", "measure_peak_cuda", "measure_peak_rss", "peak_rss_bytes", "reset_peak_rss",
    "return_freed_memory_to_os", "summarize_times", "synchronize", "time_round_robin", "usable_cpu_count",
]
