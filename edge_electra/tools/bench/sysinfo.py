"""The environment a measurement was taken in, and the machine's float32 GEMM rate (the compute floor)."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edge_electra.backends import backend_names, get_backend
from edge_electra.runtime.bundle import library_versions

# CPU features that decide which kernels a runtime can use.
INTERESTING_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                     "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "sve", "i8mm", "bf16")
# Arm's part numbers (/proc/cpuinfo "CPU part") of the cores in the device profiles and their neighbours.
ARM_CORES = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76",
             "0xd41": "Cortex-A78", "0xd42": "Cortex-A78AE", "0xd4b": "Cortex-A78C", "0xd0c": "Neoverse-N1"}
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
# Architecture families: a 32-bit user space on a 64-bit kernel of the same family (armv7l on an aarch64 Pi
# kernel) is native, not emulated.
ARCH_FAMILIES = {"aarch64": "arm", "arm64": "arm", "armv7l": "arm", "armv8l": "arm", "armv6l": "arm",
                 "x86_64": "x86", "amd64": "x86", "i686": "x86", "i386": "x86"}
# Variables qemu-user reads in every process it starts (device/arm64.sh sets QEMU_CPU through sshd).
QEMU_VARIABLES = ("QEMU_CPU", "QEMU_LD_PREFIX", "QEMU_GUEST_BASE")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """Model name and the interesting feature flags (x86 'flags' or ARM 'Features')."""
    model, flags = platform.processor() or platform.machine(), set()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware", "cpu model") and value.strip():
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
            elif key == "cpu part" and model == platform.machine():   # ARM Linux names no model: its part does
                model = ARM_CORES.get(value.strip().lower(), f"ARM part {value.strip()}")
    return {"model": model, "flags": [f for f in INTERESTING_FLAGS if f in flags],
            "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def kernel_architecture(proc: Path = Path("/proc")) -> str | None:
    """The kernel's own architecture. qemu-user answers uname() with the emulated machine, but it translates
    user space only: the kernel, and what it writes in /proc/sys/kernel/arch (Linux 6.1+) or in the compiler
    triple of /proc/version, stays the host's."""
    try:
        return (proc / "sys" / "kernel" / "arch").read_text().strip() or None
    except OSError:
        pass
    try:
        version = (proc / "version").read_text()
    except OSError:
        return None
    triple = re.search(r"\((\w+)-[\w.-]*-gcc", version)
    return triple[1] if triple else None


def emulation(machine: str | None = None, proc: Path = Path("/proc"), environ=None) -> str | None:
    """Why this process looks emulated (qemu-user running another architecture's code), or None when native.

    Two signals, either suffices: the kernel's architecture is of another family than the user space's
    (robust: needs no help from the emulator; a real Pi has an aarch64 kernel), and qemu-user's own variables
    in the environment (a fallback for kernels that state their architecture nowhere). binfmt_misc is no
    signal: a chroot does not see it, and the host that registers qemu also runs native processes.
    """
    machine = machine or platform.machine()
    kernel = kernel_architecture(proc)
    family = ARCH_FAMILIES.get(machine.lower())
    if kernel and family and ARCH_FAMILIES.get(kernel.lower(), family) != family:
        return f"{machine} user space on a {kernel} kernel"
    environ = os.environ if environ is None else environ
    qemu = [f"{name}={environ[name]}" for name in QEMU_VARIABLES if environ.get(name)]
    return f"qemu-user variables set ({', '.join(qemu)})" if qemu else None


def gemm_gflops(size: int = 512, seconds: float = 0.3) -> float:
    """Sustained float32 matmul rate numpy reaches here, in GFLOP/s (best of repeated runs)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def gemm_gflops_at(threads: int | None) -> float:
    """The GEMM rate on `threads` cores: measured in a fresh interpreter whose BLAS is capped to them
    (a BLAS sizes its thread pool once, at import). None: every core, measured here."""
    if not threads:
        return gemm_gflops()
    env = {**os.environ, **{name: str(threads) for name in BLAS_THREAD_VARIABLES}}
    done = subprocess.run([sys.executable, "-c", "from edge_electra.tools.bench.sysinfo import gemm_gflops; "
                           "print(gemm_gflops())"], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"the GEMM measurement failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout)


def backend_info() -> dict:
    """Per backend: whether it runs here and, where it does, the devices its library sees."""
    info = {}
    for name in backend_names():
        backend = get_backend(name)
        ok, why = backend.available()
        if not ok:
            info[name] = {"available": False, "why": why}
            continue
        try:
            info[name] = {"available": True, "devices": backend.devices()}
        except Exception as e:  # a library that imports but cannot list its devices must not stop the bench
            info[name] = {"available": True, "devices": [], "why": f"{type(e).__name__}: {e}"}
    return info


def system_info(threads: int | None = None) -> dict:
    libraries = [get_backend(name).library for name in backend_names()]
    why_emulated = emulation()
    return {
        "cpu": cpu_info(),
        "threads": threads,
        "os": platform.platform(),
        "machine": platform.machine(),
        # Timings taken under emulation are not the device's: report.py never shows them as device figures.
        "emulated": why_emulated is not None,
        "emulation": why_emulated,
        "hostname": platform.node(),
        "versions": library_versions("click", *filter(None, libraries)),
        "backends": backend_info(),
        "gemm_gflops": round(gemm_gflops_at(threads), 2),
        "gemm_threads": threads or "all",
    }
