"""What the tiling plans need to know about a GPU: ``GPUSpec``, a table of known GPUs, ``detect()``.

The table holds vendor figures (NVIDIA data sheets, architecture white papers and the CUDA
programming guide's table of compute-capability limits). Peak tensor-core rates are *dense*
(no 2:4 sparsity), with float32 accumulation where the data sheet distinguishes.

``detect()`` returns ``None`` when there is no CUDA device, rather than raising: callers on a
CPU-only machine (tests, ``--dry-run``) can then fall back to ``GPUSpec.from_name(...)``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class GPUSpec:
    """One GPU model's limits and speeds, as the plan models use them.

    Sizes are bytes, bandwidth bytes/s, peaks FLOP/s (dense tensor-core rates, except
    ``fp32_flops`` which is the plain CUDA-core rate).
    """

    name: str
    compute_capability: tuple[int, int]
    sm_count: int
    max_threads_per_block: int
    max_threads_per_sm: int
    max_blocks_per_sm: int
    registers_per_sm: int              # 32-bit registers
    registers_per_block: int
    max_registers_per_thread: int
    shared_mem_per_sm: int
    shared_mem_per_block: int          # without opt-in (48 KB everywhere)
    shared_mem_per_block_optin: int    # with cudaFuncAttributeMaxDynamicSharedMemorySize
    l2_bytes: int
    max_cluster_size: int              # portable thread-block-cluster size; 1 = no clusters
    memory_bandwidth: float
    boost_clock_hz: float              # the clock the vendor's peak rates are quoted at
    bf16_flops: float
    fp16_flops: float
    tf32_flops: float
    fp32_flops: float
    memory_bytes: int = 0
    source: str = "table"              # "table", "table+device" (limits read from the device), "device"

    @property
    def arch(self) -> int:
        """Compute capability as one number, e.g. 90 for sm_90."""
        return 10 * self.compute_capability[0] + self.compute_capability[1]

    @property
    def supports_clusters(self) -> bool:
        return self.max_cluster_size > 1

    def tensor_flops(self, dtype) -> float:
        """Peak dense rate for ``dtype`` (torch.float16/bfloat16/float32 or "tf32"); float32
        means IEEE float32 on the CUDA cores (no tensor cores), "tf32" the tensor-core rate."""
        key = _dtype_key(dtype)
        return {"float16": self.fp16_flops, "bfloat16": self.bf16_flops,
                "tf32": self.tf32_flops, "float32": self.fp32_flops}[key]

    @staticmethod
    def from_name(name: str) -> "GPUSpec":
        """The table entry for ``name`` (case-insensitive), e.g. "h100", "a100-80gb", "l4"."""
        if not isinstance(name, str):
            raise TypeError(f"gpu name must be a str, one of {known_names()}; got {type(name).__name__}")
        key = name.strip().lower().replace("_", "-").replace(" ", "-")
        key = _ALIASES.get(key, key)
        if key not in GPUS:
            raise ValueError(f"unknown GPU name {name!r}; known names: {known_names()}")
        return GPUS[key]


def _dtype_key(dtype) -> str:
    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
             "float16": "float16", "fp16": "float16", "half": "float16",
             "bfloat16": "bfloat16", "bf16": "bfloat16",
             "float32": "float32", "fp32": "float32", "float": "float32", "tf32": "tf32"}
    try:
        return names[dtype]
    except (KeyError, TypeError):
        raise TypeError(f"dtype must be torch.float16, torch.bfloat16, torch.float32 or 'tf32'; "
                        f"got {dtype!r}") from None


def _spec(name, cc, sms, *, smem_sm_kb, smem_optin_kb, l2_mb, bw_gbs, clock_mhz, bf16_tf,
          tf32_tf, fp32_tf, mem_gb, fp16_tf=None, threads_sm=2048, blocks_sm=32, cluster=1):
    return GPUSpec(
        name=name, compute_capability=cc, sm_count=sms,
        max_threads_per_block=1024, max_threads_per_sm=threads_sm, max_blocks_per_sm=blocks_sm,
        registers_per_sm=65536, registers_per_block=65536, max_registers_per_thread=255,
        shared_mem_per_sm=smem_sm_kb * KB, shared_mem_per_block=48 * KB,
        shared_mem_per_block_optin=smem_optin_kb * KB, l2_bytes=int(l2_mb * MB),
        max_cluster_size=cluster, memory_bandwidth=bw_gbs * 1e9, boost_clock_hz=clock_mhz * 1e6,
        bf16_flops=bf16_tf * 1e12, fp16_flops=(fp16_tf or bf16_tf) * 1e12,
        tf32_flops=tf32_tf * 1e12, fp32_flops=fp32_tf * 1e12, memory_bytes=mem_gb * 10**9)


# Shared memory per SM / per block (opt-in): sm_80 164/163 KB, sm_86 and sm_89 100/99 KB,
# sm_90 and sm_100 228/227 KB (CUDA programming guide, "Features and Technical Specifications").
# Max threads per SM is 1536 on sm_86/sm_89 (16 resp. 24 resident blocks), 2048 elsewhere.
# Clusters exist from sm_90; 8 CTAs is the portable limit (16 needs a non-portable opt-in).
# The clock is the one the peak rates imply (H100 PCIe: 1620 MHz, below its 1755 MHz boost;
# B200: its data sheet gives no clock, 1855 MHz is what 2.25 PFLOPS over 148 SMs implies).
GPUS: dict[str, GPUSpec] = {
    "a100-40gb": _spec("NVIDIA A100-SXM4-40GB", (8, 0), 108, smem_sm_kb=164, smem_optin_kb=163,
                       l2_mb=40, bw_gbs=1555, clock_mhz=1410, bf16_tf=312, tf32_tf=156,
                       fp32_tf=19.5, mem_gb=40),
    "a100-80gb": _spec("NVIDIA A100-SXM4-80GB", (8, 0), 108, smem_sm_kb=164, smem_optin_kb=163,
                       l2_mb=40, bw_gbs=2039, clock_mhz=1410, bf16_tf=312, tf32_tf=156,
                       fp32_tf=19.5, mem_gb=80),
    "a10": _spec("NVIDIA A10", (8, 6), 72, smem_sm_kb=100, smem_optin_kb=99, l2_mb=6, bw_gbs=600,
                 clock_mhz=1695, bf16_tf=125, tf32_tf=62.5, fp32_tf=31.2, mem_gb=24,
                 threads_sm=1536, blocks_sm=16),
    "l4": _spec("NVIDIA L4", (8, 9), 58, smem_sm_kb=100, smem_optin_kb=99, l2_mb=48, bw_gbs=300,
                clock_mhz=2040, bf16_tf=121, tf32_tf=60, fp32_tf=30.3, mem_gb=24,
                threads_sm=1536, blocks_sm=24),
    # GeForce: 165.2 TFLOPS is the FP16/BF16 rate with float32 accumulation (330 with FP16 acc.).
    "rtx4090": _spec("NVIDIA GeForce RTX 4090", (8, 9), 128, smem_sm_kb=100, smem_optin_kb=99,
                     l2_mb=72, bw_gbs=1008, clock_mhz=2520, bf16_tf=165.2, tf32_tf=82.6,
                     fp32_tf=82.6, mem_gb=24, threads_sm=1536, blocks_sm=24),
    "h100-sxm": _spec("NVIDIA H100 80GB HBM3", (9, 0), 132, smem_sm_kb=228, smem_optin_kb=227,
                      l2_mb=50, bw_gbs=3350, clock_mhz=1830, bf16_tf=989.4, tf32_tf=494.7,
                      fp32_tf=66.9, mem_gb=80, cluster=8),
    "h100-pcie": _spec("NVIDIA H100 PCIe", (9, 0), 114, smem_sm_kb=228, smem_optin_kb=227,
                       l2_mb=50, bw_gbs=2000, clock_mhz=1620, bf16_tf=756.5, tf32_tf=378,
                       fp32_tf=51.2, mem_gb=80, cluster=8),
    "h200": _spec("NVIDIA H200", (9, 0), 132, smem_sm_kb=228, smem_optin_kb=227, l2_mb=50,
                  bw_gbs=4800, clock_mhz=1830, bf16_tf=989.4, tf32_tf=494.7, fp32_tf=66.9,
                  mem_gb=141, cluster=8),
    # B200: 2.25 PFLOPS dense BF16 (4.5 sparse), 1.1 PFLOPS dense TF32; L2 as the device reports it.
    "b200": _spec("NVIDIA B200", (10, 0), 148, smem_sm_kb=228, smem_optin_kb=227, l2_mb=126.5,
                  bw_gbs=8000, clock_mhz=1855, bf16_tf=2250, tf32_tf=1125, fp32_tf=80,
                  mem_gb=180, cluster=8),
}

_ALIASES = {
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm", "h100-80gb-hbm3": "h100-sxm",
    "a100": "a100-40gb", "a100-40": "a100-40gb", "a100-80": "a100-80gb",
    "rtx-4090": "rtx4090", "4090": "rtx4090", "geforce-rtx-4090": "rtx4090",
    "h200-sxm": "h200", "b200-sxm": "b200",
}


def known_names() -> list[str]:
    """Every name ``GPUSpec.from_name`` accepts."""
    return sorted({*GPUS, *_ALIASES})


def match_device_name(device_name: str) -> str | None:
    """The table key for a device name as CUDA reports it ("NVIDIA H100 80GB HBM3"), or None."""
    n = device_name.lower()
    if "h200" in n:
        return "h200"
    if "h100" in n:
        # The PCIe card says so in its name; SXM and NVL parts report "HBM3".
        return "h100-pcie" if "pcie" in n else "h100-sxm"
    if "a100" in n:
        return "a100-80gb" if "80g" in n else "a100-40gb"
    if "b200" in n:
        return "b200"
    if "4090" in n:
        return "rtx4090"
    words = n.replace("nvidia", "").split()
    if words == ["a10"]:
        return "a10"
    if words == ["l4"]:
        return "l4"
    return None


# Dense FP16 tensor FLOP per clock per SM by architecture, for devices not in the table
# (A100 2048, A10/L4 1024, H100 4096 (wgmma)); GeForce Ada is half of L4's with fp32 accumulation.
_FLOP_PER_CLOCK_PER_SM = {80: 2048, 86: 1024, 87: 1024, 89: 1024, 90: 4096, 100: 8192}
_DEFAULT_CLOCK_HZ = 1.5e9
_DEFAULT_BANDWIDTH = 1.0e12   # torch does not report the memory bus; a cautious guess


def _spec_from_properties(props) -> GPUSpec:
    cc = (int(props.major), int(props.minor))
    name = str(props.name)
    sms = int(props.multi_processor_count)

    def prop(attr, default):
        value = getattr(props, attr, None)
        return int(value) if value else default

    key = match_device_name(name)
    if key is not None:
        base = GPUS[key]
        # What the device reports wins over the table: a MIG slice has fewer SMs and a smaller L2,
        # so the rates that scale with the SM count are scaled with it.
        scale = sms / base.sm_count
        return dataclasses.replace(
            base, name=name, sm_count=sms,
            registers_per_sm=prop("regs_per_multiprocessor", base.registers_per_sm),
            shared_mem_per_sm=prop("shared_memory_per_multiprocessor", base.shared_mem_per_sm),
            shared_mem_per_block=prop("shared_memory_per_block", base.shared_mem_per_block),
            shared_mem_per_block_optin=prop("shared_memory_per_block_optin",
                                            base.shared_mem_per_block_optin),
            max_threads_per_sm=prop("max_threads_per_multi_processor", base.max_threads_per_sm),
            l2_bytes=prop("L2_cache_size", base.l2_bytes),
            memory_bytes=prop("total_memory", base.memory_bytes),
            bf16_flops=base.bf16_flops * scale, fp16_flops=base.fp16_flops * scale,
            tf32_flops=base.tf32_flops * scale, fp32_flops=base.fp32_flops * scale,
            source="table+device")
    arch = 10 * cc[0] + cc[1]
    per_clock = _FLOP_PER_CLOCK_PER_SM.get(arch, 1024 if arch < 90 else 4096)
    half = per_clock * sms * _DEFAULT_CLOCK_HZ
    return GPUSpec(
        name=name, compute_capability=cc, sm_count=sms, max_threads_per_block=1024,
        max_threads_per_sm=prop("max_threads_per_multi_processor", 2048),
        max_blocks_per_sm=32 if arch in (80, 90, 100) else 16,
        registers_per_sm=prop("regs_per_multiprocessor", 65536), registers_per_block=65536,
        max_registers_per_thread=255,
        shared_mem_per_sm=prop("shared_memory_per_multiprocessor", 100 * KB),
        shared_mem_per_block=prop("shared_memory_per_block", 48 * KB),
        shared_mem_per_block_optin=prop("shared_memory_per_block_optin", 48 * KB),
        l2_bytes=prop("L2_cache_size", 4 * MB), max_cluster_size=8 if cc[0] >= 9 else 1,
        memory_bandwidth=_DEFAULT_BANDWIDTH, boost_clock_hz=_DEFAULT_CLOCK_HZ,
        bf16_flops=half, fp16_flops=half, tf32_flops=half / 2, fp32_flops=128 * sms * _DEFAULT_CLOCK_HZ,
        memory_bytes=prop("total_memory", 0), source="device")


def detect(device=None) -> GPUSpec | None:
    """The ``GPUSpec`` of a CUDA device (default: the current one), or None without CUDA.

    A device whose name matches the table gets the table's vendor figures, with the limits the
    device itself reports (SM count, registers, shared memory, L2) taking precedence; any other
    device is described from what torch reports, with estimated peak rates (``source="device"``).
    """
    if not torch.cuda.is_available():
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device; got {device}")
    return _spec_from_properties(torch.cuda.get_device_properties(device))


__all__ = ["GPUSpec", "GPUS", "detect", "known_names", "match_device_name"]
