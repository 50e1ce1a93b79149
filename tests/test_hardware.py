"""GPUSpec table, name lookup and device detection."""
import types

import pytest
import torch

from flashseq import hardware
from flashseq.hardware import GPUS, GPUSpec

REQUIRED_NAMES = ["h100", "h100-sxm", "h100-pcie", "h200", "a100", "a100-80gb", "a10", "l4",
                  "rtx4090", "b200"]


@pytest.mark.parametrize("name", REQUIRED_NAMES)
def test_from_name_accepts_required_names_any_case(name):
    assert GPUSpec.from_name(name) is GPUSpec.from_name(name.upper())


def test_from_name_picks_the_right_card():
    assert GPUSpec.from_name("h100").sm_count == 132
    assert GPUSpec.from_name("h100-pcie").sm_count == 114
    assert GPUSpec.from_name("a100").memory_bytes == 40 * 10**9
    assert GPUSpec.from_name("a100-80gb").memory_bandwidth > GPUSpec.from_name("a100").memory_bandwidth
    assert GPUSpec.from_name("h200").memory_bandwidth == 4.8e12


@pytest.mark.parametrize("bad", ["h300", "", "v100"])
def test_from_name_unknown_lists_known_names(bad):
    with pytest.raises(ValueError, match="known names.*h100"):
        GPUSpec.from_name(bad)


def test_from_name_rejects_non_strings():
    with pytest.raises(TypeError, match="gpu name must be a str"):
        GPUSpec.from_name(100)


@pytest.mark.parametrize("key", sorted(GPUS))
def test_table_entries_are_consistent(key):
    g = GPUS[key]
    assert g.registers_per_sm == 65536 and g.max_registers_per_thread == 255
    assert g.shared_mem_per_block <= g.shared_mem_per_block_optin < g.shared_mem_per_sm
    assert g.max_threads_per_block <= g.max_threads_per_sm
    # dense tensor rates: half precision twice tf32, tf32 above plain fp32 everywhere
    assert g.bf16_flops == g.fp16_flops and abs(g.bf16_flops / g.tf32_flops - 2) < 0.05
    assert g.tf32_flops >= g.fp32_flops
    # the clock and SM count must agree with the peak: FLOP/clock/SM is a power of two
    per_clock = g.bf16_flops / (g.sm_count * g.boost_clock_hz)
    assert min(abs(per_clock / p - 1) for p in (512, 1024, 2048, 4096, 8192)) < 0.02, per_clock
    assert (g.max_cluster_size > 1) == (g.arch >= 90)


def test_tensor_flops_by_dtype():
    g = GPUSpec.from_name("h100")
    assert g.tensor_flops(torch.bfloat16) == g.bf16_flops
    assert g.tensor_flops("tf32") == g.tf32_flops
    assert g.tensor_flops(torch.float32) == g.fp32_flops
    with pytest.raises(TypeError, match="dtype must be"):
        g.tensor_flops(torch.float64)


@pytest.mark.parametrize("device_name,key", [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", "a100-80gb"), ("NVIDIA A10", "a10"), ("NVIDIA L4", "l4"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA B200", "b200"), ("NVIDIA L40S", None),
    ("NVIDIA A10G", None),
])
def test_match_device_name(device_name, key):
    assert hardware.match_device_name(device_name) == key


def _fake_props(name, sms, major=9, minor=0):
    return types.SimpleNamespace(
        name=name, major=major, minor=minor, multi_processor_count=sms, total_memory=80 * 10**9,
        L2_cache_size=25 * 2**20, regs_per_multiprocessor=65536, shared_memory_per_block=48 * 1024,
        shared_memory_per_block_optin=227 * 1024, shared_memory_per_multiprocessor=228 * 1024,
        max_threads_per_multi_processor=2048)


def test_spec_from_known_device_prefers_device_limits():
    # a MIG-like slice: fewer SMs than the table, rates scaled with them
    spec = hardware._spec_from_properties(_fake_props("NVIDIA H100 80GB HBM3", 66))
    table = GPUS["h100-sxm"]
    assert spec.source == "table+device" and spec.sm_count == 66
    assert spec.l2_bytes == 25 * 2**20
    assert spec.bf16_flops == pytest.approx(table.bf16_flops / 2)
    assert spec.memory_bandwidth == table.memory_bandwidth


def test_spec_from_unknown_device_uses_torch_properties():
    spec = hardware._spec_from_properties(_fake_props("NVIDIA Future GPU", 100, major=12))
    assert spec.source == "device" and spec.sm_count == 100 and spec.compute_capability == (12, 0)
    assert spec.bf16_flops > 0 and spec.shared_mem_per_block_optin == 227 * 1024


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")
def test_detect_without_cuda_returns_none():
    assert hardware.detect() is None


@pytest.mark.gpu
def test_detect_on_gpu():
    spec = hardware.detect()
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    assert spec.sm_count == props.multi_processor_count
    assert spec.name == props.name
