"""The profiler breakdown of benchmarks/throughput.py --profile_steps (pure parts on synthetic rows; CPU smoke run)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch.autograd import DeviceType

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import profile_breakdown as pb  # noqa: E402
from benchmarks import throughput  # noqa: E402

# (kernel name as the profiler reports it on an H100 or on the CPU, phase) -> category
NAMES = {
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT", ""): "gemm",
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off", ""): "gemm",
    ("void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_64x4_nn_align8>(Params)", ""): "gemm",
    ("ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn", ""): "gemm",
    ("void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float>(cublasSplitKParams<float>)", ""): "gemm",
    ("triton_tem_fused_mm_3", ""): "gemm",
    ("aten::addmm", ""): "gemm",
    ("triton_tem_fused_mm_3", "head_ce"): "gemm",  # the head's GEMMs stay GEMMs
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, "
     "cutlass::bfloat16_t>, false, true>(pytorch_flash::Flash_fwd_params)", ""): "attn_fwd",
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128>>()", ""): "attn_bwd",
    ("void pytorch_flash::flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<128>>()", ""): "attn_bwd",
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0", ""): "attn_fwd",
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0", ""): "attn_bwd",
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
     "cutlass::arch::Sm80, true, 64, 128, 128, true, true>::Params)", ""): "attn_fwd",
    ("fmha_cutlassB_bf16_aligned_128x128_k128_sm80(PyTorchMemEffAttention::AttentionBackwardKernel<>::Params)", ""):
        "attn_bwd",
    ("triton_tem_fused_flex_attention_0", ""): "attn_fwd",
    ("triton_tem_fused_flex_attention_backward_1", ""): "attn_bwd",
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", ""): "attn_bwd",
    ("_scan_fwd_kernel", ""): "scan",
    ("_scan_bwd_kernel", ""): "scan",
    ("_scan_bwd_summary_kernel", ""): "scan",
    ("void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<1, float>()", ""): "conv",
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", ""): "conv",
    ("triton_poi_fused__to_copy_add_mul_0", ""): "inductor",
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_1", "backward"): "inductor",
    ("triton_per_fused__softmax_convolution_2", ""): "inductor",
    ("swiglu_bwd", "backward"): "inductor",  # kernels/swiglu.py, in place of inductor's kernel  # aten names inside an inductor kernel don't count
    ("triton_red_fused__to_copy_arange_eq_exp_gather_logsumexp_mul_sub_where_0", "head_ce"): "cross_entropy",
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float>()", ""): "cross_entropy",
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>()", "head_ce"):
        "cross_entropy",
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "TensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>()", ""): "optimizer",
    ("void at::native::lpnorm_cleanup<float, (at::native::NormType)1, float>()", "clip"): "optimizer",
    ("aten::_fused_adamw_", "optimizer"): "optimizer",
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>()", ""): "aten_eager",
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>()", "backward"): "aten_eager",
    ("aten::mul_", ""): "aten_eager",
    ("Memcpy HtoD (Pinned -> Device)", ""): "memcpy_memset",
    ("Memset (Device)", ""): "memcpy_memset",
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)", ""): "nccl",
    ("some_unknown_kernel", ""): "other",
}


@pytest.mark.parametrize("name,phase", list(NAMES))
def test_categorize_synthetic_names(name, phase):
    assert pb.categorize(name, phase) == NAMES[(name, phase)]
    assert NAMES[(name, phase)] in pb.CATEGORIES


def test_phase_of_innermost_marker_wins():
    assert pb.phase_of(["triton_poi_fused_0", "CompiledFunction"]) == "forward"
    assert pb.phase_of(["aten::mm", "MmBackward0", "autograd::engine::evaluate_function: MmBackward0"]) == "backward"
    assert pb.phase_of(["aten::mm", pb.HEAD_MARK]) == "head_ce"
    assert pb.phase_of(["aten::_foreach_norm", "aten::linalg_vector_norm", pb.CLIP_MARK]) == "clip"
    assert pb.phase_of(["aten::_fused_adamw_", "Optimizer.step#AdamW.step"]) == "optimizer"


def test_union_us():
    assert pb.union_us([]) == 0
    assert pb.union_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17


def test_breakdown_per_step_tables():
    rows = [("nvjet_a", 600.0, "forward"), ("nvjet_a", 600.0, "backward"), ("nvjet_b", 200.0, "head_ce"),
            ("triton_poi_fused_0", 100.0, "forward"), ("triton_red_fused_logsumexp_0", 300.0, "head_ce"),
            ("Memset (Device)", 200.0, "unattributed")]
    b = pb.breakdown(rows, steps=2, top=3)
    assert b["kernel_ms"] == 1.0  # 2000 µs over 2 steps
    cats = b["categories"]
    assert list(cats) == ["gemm", "inductor", "cross_entropy", "memcpy_memset"]  # in CATEGORIES order
    assert cats["gemm"] == dict(ms=0.7, pct=70.0, calls=1.5)
    assert cats["cross_entropy"]["ms"] == 0.15 and cats["inductor"]["ms"] == 0.05
    assert abs(sum(c["pct"] for c in cats.values()) - 100) < 0.2
    assert b["phases"]["head_ce"] == dict(ms=0.25, pct=25.0) and b["phases"]["unattributed"]["ms"] == 0.1
    top = b["top_kernels"]
    assert [k["name"] for k in top] == ["nvjet_a", "triton_red_fused_logsumexp_0", "nvjet_b"]
    assert top[0] == dict(name="nvjet_a", category="gemm", ms=0.6, pct=60.0, calls=1.0, mean_us=600.0)
    assert top[1]["category"] == "cross_entropy"


def _event(name, device_type, start=0.0, end=0.0, parent=None, kernels=(), annotation=False, flops=0):
    return SimpleNamespace(name=name, device_type=device_type, time_range=SimpleNamespace(start=start, end=end),
                           cpu_parent=parent, kernels=[SimpleNamespace(name=n, device=0, duration=d) for n, d in kernels],
                           is_user_annotation=annotation, flops=flops, self_cpu_time_total=end - start)


def test_collect_cuda_counts_each_device_event_once():
    cpu, cuda = DeviceType.CPU, DeviceType.CUDA
    head = _event(pb.HEAD_MARK, cpu, 0, 50, annotation=True, kernels=[(pb.HEAD_MARK, 40.0)])  # GPU copy of the range
    mm = _event("aten::mm", cpu, 1, 2, parent=head, kernels=[("nvjet_x", 10.0)], flops=1000)
    bwd = _event("autograd::engine::evaluate_function: MmBackward0", cpu, 60, 70)
    mm2 = _event("aten::mm", cpu, 61, 62, parent=bwd, kernels=[("nvjet_x", 10.0)], flops=1000)
    events = [head, mm, bwd, mm2,
              _event("nvjet_x", cuda, 100, 110), _event("nvjet_x", cuda, 105, 115),  # overlapping streams
              _event(pb.HEAD_MARK, cuda, 100, 140, annotation=True),  # a GPU user annotation: not a kernel
              _event("Memset (Device)", cuda, 200, 203),  # no CPU op claims it
              _event("adamw_step", cuda, 300, 310)]  # TritonAdamW's kernel: no aten op launched it
    rows, busy, flops = pb.collect(SimpleNamespace(events=lambda: events), cuda=True)
    assert sorted(rows) == sorted([("nvjet_x", 10.0, "head_ce"), ("nvjet_x", 10.0, "backward"),
                                   ("Memset (Device)", 3.0, "unattributed"), ("adamw_step", 10.0, "optimizer")])
    assert busy == 28.0 and flops == 2000.0


def test_cpu_smoke_profile_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    from lit_gpt.kernels import cross_entropy

    original = cross_entropy.linear_cross_entropy
    out, prof_dir = tmp_path / "tp.json", tmp_path / "prof"
    rc = throughput.main(["--cpu", "--depth", "1", "--ar", "16", "--ctx_len", "32", "--vocab_size", "256",
                          "--steps", "1", "--warmup", "1", "--profile_steps", "2", "--profile_dir", str(prof_dir),
                          "--json", str(out)])
    assert rc == 0
    assert cross_entropy.linear_cross_entropy is original  # the phase marks are removed again
    row = json.loads(out.read_text())["results"][0]
    assert "error" not in row, row.get("traceback")
    prof = row["profile"]
    assert "error" not in prof and prof["steps"] == 2 and prof["busy_ms"] is None
    assert {"gemm", "attn_fwd", "attn_bwd", "cross_entropy"} <= set(prof["categories"])
    assert {"forward", "head_ce", "backward", "clip", "optimizer"} <= set(prof["phases"])
    assert abs(sum(c["ms"] for c in prof["categories"].values()) - prof["kernel_ms"]) < 0.01
    assert len(prof["top_kernels"]) == 25
    gemm = prof["gemm"]  # on the CPU every gemm is an aten mm op: the profiler's count equals 6 x tokens x weights
    assert gemm["flops_profiler"] == gemm["flops_analytic"] > 0
    assert json.loads((prof_dir / "base_profile.json").read_text())["kernel_ms"] == prof["kernel_ms"]
    with gzip.open(prof_dir / "base_trace.json.gz", "rt") as fh:
        assert json.load(fh)["traceEvents"]


def test_trace_summary_counts_exposed_collectives(tmp_path):
    """Two 10 ms steps; compute kernels 0-6 ms and 10-16 ms, an all-gather 5-8 ms (2 ms exposed) and 12-13 ms
    (hidden): exposed collectives 1 ms/step, idle 3 ms/step."""
    ms = 1000.0
    events = [{"ph": "X", "name": f"ProfilerStep#{i}", "ts": i * 10 * ms, "dur": 10 * ms, "cat": "user_annotation"}
              for i in range(2)]
    events += [dict(e, cat="gpu_user_annotation") for e in events]  # the device-side copies are not extra steps
    events += [{"ph": "X", "cat": "kernel", "name": "nvjet_tst_128x256", "ts": t * ms, "dur": 6 * ms} for t in (0, 10)]
    events += [{"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllGather_RING_LL", "ts": t * ms, "dur": d * ms}
               for t, d in ((5, 3), (12, 1))]
    path = tmp_path / "rank0.pt.trace.json.gz"
    with gzip.open(path, "wt") as fh:
        json.dump({"traceEvents": events}, fh)
    s = pb.summarize_trace(path)
    assert s["steps"] == 2 and s["step_ms"] == 10.0
    assert s["compute_busy_ms"] == 6.0 and s["busy_ms"] == 7.0
    assert s["nccl_exposed_ms"] == 1.0 and s["idle_ms"] == 3.0
    assert s["categories"]["nccl"]["ms"] == 2.0 and s["categories"]["gemm"]["ms"] == 6.0
    assert "collectives exposed" in pb.format_trace_summary(s)
    # idle stretches: 8-10 ms between the first all-gather and the second step's gemm; nothing idle after 16 ms
    # counts (the last kernel ends the trace's device time), and 0-8 overlaps are no gap
    assert s["idle_gaps"] == [dict(ms=2.0, before="ncclDevKernel_AllGather_RING_LL", after="nvjet_tst_128x256")]
    with pytest.raises(ValueError, match="no device kernels"):
        plain = tmp_path / "cpu.json"
        plain.write_text(json.dumps({"traceEvents": events[:4]}))
        pb.summarize_trace(plain)


def test_trace_summary_times_steps_on_the_device_when_the_host_runs_ahead(tmp_path):
    """Without a host sync per step the CPU's ProfilerStep ranges end long before their kernels: the step time comes
    from the device-side copies (2 steps of 10 ms, from 3 ms to 23 ms), and kernels outside the profiled steps (one
    before, one after) are not counted."""
    ms = 1000.0
    cpu = [{"ph": "X", "name": f"ProfilerStep#{i}", "ts": i * 4 * ms, "dur": 4 * ms, "cat": "user_annotation"}
           for i in range(2)]
    gpu = [{"ph": "X", "name": f"ProfilerStep#{i}", "ts": (3 + 10 * i) * ms, "dur": 10 * ms,
            "cat": "gpu_user_annotation"} for i in range(2)]
    kernels = [{"ph": "X", "cat": "kernel", "name": "nvjet_tst_128x256", "ts": t * ms, "dur": 8 * ms} for t in (3, 13)]
    kernels += [{"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add", "ts": t * ms, "dur": 1 * ms}
                for t in (1, 24)]  # the step before and the step after the profiled ones
    path = tmp_path / "rank0.pt.trace.json"
    path.write_text(json.dumps({"traceEvents": cpu + gpu + kernels}))
    s = pb.summarize_trace(path)
    assert s["steps"] == 2 and s["step_ms"] == 10.0
    assert s["busy_ms"] == 8.0 and s["idle_ms"] == 2.0
    assert set(s["categories"]) == {"gemm"}
    assert s["idle_gaps"] == [dict(ms=2.0, before="nvjet_tst_128x256", after="nvjet_tst_128x256")]


def test_breakdown_lists_idle_gaps_when_the_trace_has_them():
    """throughput.py --profile_dir: the step's idle gaps (from its exported trace) print under the breakdown."""
    b = pb.breakdown([("nvjet_a", 600.0, "forward")], 1)
    b.update(name="base", device="cuda", steps=1, tokens_per_step=8, step_ms_unprofiled=1.0, wall_ms=1.0, busy_ms=0.6,
             idle_ms=0.4, mfu_if_never_idle=None, gemm=dict(flops_profiler=0, flops_analytic=0, tflops_profiler=None,
                                                             tflops_analytic=None),
             trace="t.json.gz", idle_gaps=[dict(ms=0.4, before="adamw_step", after="triton_red_fused_0")])
    text = pb.format_breakdown(b)
    assert "idle gap    0.400 ms after adamw_step | before triton_red_fused_0" in text


def test_idle_gaps_say_what_the_host_did():
    """A synchronization that ends as the device runs dry (4 ms in cudaStreamSynchronize, ending at 5 ms), then 1.8 ms
    of host work before the next launch: the gap names the wait, the launch delay and the host ops in between."""
    ms = 1000.0
    events = [{"ph": "X", "name": "ProfilerStep#0", "ts": 0.0, "dur": 10 * ms, "cat": "gpu_user_annotation"},
              {"ph": "X", "cat": "kernel", "name": "nvjet_tst_128x256", "ts": 0.0, "dur": 5 * ms,
               "args": {"correlation": 6}},
              {"ph": "X", "cat": "kernel", "name": "triton_red_fused_0", "ts": 7 * ms, "dur": 2 * ms,
               "args": {"correlation": 7}},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 0.0, "dur": 5.0,
               "args": {"correlation": 6}},
              {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 1 * ms, "dur": 4 * ms},
              {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernelEx", "ts": 6.8 * ms, "dur": 5.0,
               "args": {"correlation": 7}},  # Triton launches through the driver API
              {"ph": "X", "cat": "cpu_op", "name": "aten::item", "ts": 1 * ms, "dur": 4 * ms},  # before the gap
              {"ph": "X", "cat": "cpu_op", "name": "aten::randint", "ts": 5.2 * ms, "dur": 1 * ms},
              {"ph": "X", "cat": "cpu_op", "name": "aten::copy_", "ts": 6.3 * ms, "dur": 0.4 * ms}]
    gaps = pb.idle_gaps([e for e in events if e["cat"] == "kernel"], host=events)
    assert gaps == [dict(ms=2.0, before="nvjet_tst_128x256", after="triton_red_fused_0",
                         launch_ms=1.8, waited_in="cudaStreamSynchronize (4.000 ms)",
                         host_ops={"aten::randint": 1.0, "aten::copy_": 0.4})]
    text = pb._gap_line(gaps[0])
    assert "host waited in cudaStreamSynchronize (4.000 ms)" in text and "launched 1.800 ms into the gap" in text
    assert pb.idle_gaps([e for e in events if e["cat"] == "kernel"]) == [
        dict(ms=2.0, before="nvjet_tst_128x256", after="triton_red_fused_0")]  # no host events: no host keys
