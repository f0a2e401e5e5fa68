"""benchmarks/profile_split.py, the breakdown behind train_speed.py --profile: kernel names (as CUDA, cuBLAS, cuDNN,
Triton and inductor name them) to categories, the aggregation, the attribution of a kernel to the op that launched
it (on a stand-in for torch.profiler's events), the table; and train_speed.py --smoke --profile on the CPU."""

import json
from types import SimpleNamespace

import pytest
from bench_scripts import load
from torch.autograd import DeviceType


@pytest.fixture(scope="module")
def ps():
    return load("profile_split")


KERNELS = {
    "matmul": [
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel"
        "__5x_cublas",
        "nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT",
        "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>"
        "(cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8::Params)",
        "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn",
        "void splitKreduce_kernel<32, 16, int, float, __nv_bfloat16, float, __nv_bfloat16, true, false, false>"
        "(cublasSplitKParams<float>, float const*, __nv_bfloat16 const*, __nv_bfloat16*)",
        "triton_tem_fused_mm_0",
        "triton_tem_fused_addmm_relu_3",
        "aten::mm", "aten::addmm", "aten::bmm",
    ],
    "attention": [
        "flash_fwd", "flash_bwd_dq", "flash_bwd_dkdv", "flash_fwd_sm90", "alibi_first_block",
        "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, "
        "cutlass::bfloat16_t, Flash_kernel_traits<128, 128, 64, 4, cutlass::bfloat16_t> >, false, true, false, "
        "false, false, true, false, false>(pytorch_flash::Flash_fwd_params)",
        "void pytorch_flash::flash_bwd_dot_do_o_kernel<true, Flash_bwd_kernel_traits<128, 64, 128, 8, 2, 4, 2, "
        "false, false, cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 8, cutlass::bfloat16_t> > >"
        "(pytorch_flash::Flash_bwd_params)",
        "fmha_cutlassF_bf16_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
        "cutlass::arch::Sm80, true, 64, 64, 64, true, true>::Params)",
        "triton_tem_fused_0",  # an inductor template that is no matmul: FlexAttention
        "aten::_scaled_dot_product_flash_attention_for_cpu",
    ],
    "elementwise_norm": [
        "triton_per_fused_native_layer_norm_0",
        "triton_per_fused__to_copy_native_layer_norm_native_layer_norm_backward_3",
        "triton_poi_fused_add_mul_5",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_2",
        "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
        "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, std::array<char*, 3ul>)",
        "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float>(int, float, "
        "c10::BFloat16 const*, c10::BFloat16 const*, c10::BFloat16 const*, float*, float*, c10::BFloat16*)",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
        "float, float>, unsigned int, float, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, "
        "float, float>, unsigned int, float, 4>)",
        "aten::native_layer_norm", "aten::native_layer_norm_backward", "aten::gelu_backward", "aten::add_",
    ],
    "loss_head": [
        "liger_cross_entropy_kernel",
        "_cce_lse_forward_kernel",
        "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, c10::BFloat16, float, float, "
        "at::native::(anonymous namespace)::LogSoftMaxForwardEpilogue>(c10::BFloat16*, c10::BFloat16 const*, int)",
        "void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>"
        "(float*, float*, float const*, long const*, float const*, bool, long, long, long, long)",
    ],
    "optimizer": [
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4, "
        "(at::native::ADAM_MODE)1, false>, double*, double, double, double, double, double, bool const*, "
        "float const*>(at::native::(anonymous namespace)::FusedOptimizerTensorListMetadata<4>)",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<1>, at::native::(anonymous namespace)::LpNormFunctor<c10::BFloat16, "
        "(at::native::(anonymous namespace)::NormType)1, float, float>, float*, int>(...)",
        "void at::native::lpnorm_cleanup<float, (at::native::(anonymous namespace)::NormType)1, float, float>"
        "(float const*, at::native::(anonymous namespace)::TensorListAddresses, int)",
        "void kOptimizer32bit2State<float, 0, 0>(float*, float*, float*, float*, float*, float*, float, float)",
        "aten::_fused_adamw_", "aten::_foreach_add_",
    ],
    "copy_memset": [
        "Memcpy DtoD (Device -> Device)", "Memcpy HtoD (Pageable -> Device)", "Memset (Device)",
        "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
        "::{lambda()#3}::operator()() const::{lambda()#12}::operator()() const::{lambda(c10::BFloat16)#1}, "
        "std::array<char*, 2ul>, 4, TrivialOffsetCalculator<1, unsigned int>, TrivialOffsetCalculator<1, "
        "unsigned int>, at::native::memory::LoadWithCast<1>, at::native::memory::StoreWithCast<1> >(...)",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, std::array<char*, 1ul> >"
        "(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<at::native::(anonymous namespace)::OpaqueType"
        "<2u>, unsigned int, 3, 128, 1>(...)",
        "triton_poi_fused__to_copy_0", "triton_poi_fused_clone_1", "triton_poi_fused__to_copy_clone_2",
        "aten::copy_", "aten::contiguous", "aten::clone",
    ],
    "communication": [
        "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
        "ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)",
        "c10d::allreduce_",
    ],
    "other": [
        "void at::native::(anonymous namespace)::indexSelectLargeIndex<c10::BFloat16, long, unsigned int, 2, 2, -2, "
        "true>(at::cuda::detail::TensorInfo<c10::BFloat16, unsigned int>, long)",
        "aten::embedding", "aten::empty_strided", "aten::view", "Torch-Compiled Region: 1/0",
    ],
}


@pytest.mark.parametrize("cat,name", [(c, n) for c, names in KERNELS.items() for n in names])
def test_kernel_names_fall_into_their_category(ps, cat, name):
    assert cat in ps.CATEGORIES
    assert ps.categorize(name) == cat


def test_the_launching_op_decides_except_for_communication(ps):
    assert ps.scope_category("_LinearCrossEntropy") == "loss_head"
    assert ps.scope_category("autograd::engine::evaluate_function: _LinearCrossEntropyBackward") == "loss_head"
    assert ps.scope_category("LigerFusedLinearCrossEntropyFunction") == "loss_head"
    assert ps.scope_category("Optimizer.step#AdamW.step") == "optimizer"
    assert ps.scope_category("aten::_foreach_norm") == "optimizer"
    assert ps.scope_category("andromeda::flash_attention_bwd") == "attention"
    assert ps.scope_category("aten::_scaled_dot_product_cudnn_attention") == "attention"
    assert ps.scope_category("autograd::engine::evaluate_function: ScaledDotProductFlashAttentionBackward0") \
        == "attention"
    for plain in ("aten::mm", "CompiledFunction", "Torch-Compiled Region: 0/1", "aten::copy_"):
        assert ps.scope_category(plain) is None
    gemm = KERNELS["matmul"][1]
    assert ps.categorize(gemm, "loss_head") == "loss_head"  # the LM head's GEMM inside the fused loss
    assert ps.categorize("Memset (Device)", "attention") == "attention"  # dq's accumulator, zeroed for the kernel
    assert ps.categorize(KERNELS["communication"][0], "optimizer") == "communication"


def test_aggregate_and_busy(ps):
    ev = [("gemm_a", 300.0, "matmul", "forward"), ("gemm_a", 500.0, "matmul", "backward"),
          ("flash_fwd", 200.0, "attention", "forward"), ("gemm_a", 100.0, "loss_head", "forward"),
          ("adam", 900.0, "optimizer", "optimizer")]
    out = ps.aggregate(ev, steps=2, top=3)
    cats = out["categories"]
    assert set(cats) == set(ps.CATEGORIES) and cats["communication"] == {"ms": 0.0, "share": 0.0, "count": 0.0}
    assert cats["matmul"]["ms"] == pytest.approx(0.4) and cats["matmul"]["count"] == 1.0  # per step
    assert out["total_ms"] == pytest.approx(1.0)
    assert sum(c["share"] for c in cats.values()) == pytest.approx(1.0)
    assert out["by_phase"]["forward"]["total"] == pytest.approx(0.3)
    assert out["by_phase"]["backward"]["matmul"] == pytest.approx(0.25)
    assert [(t["name"], t["category"]) for t in out["top"]] == [("adam", "optimizer"), ("gemm_a", "matmul"),
                                                                ("flash_fwd", "attention")]
    assert out["top"][1]["ms"] == pytest.approx(0.4) and out["top"][1]["count"] == 1.0
    assert ps.busy_us([(0, 10), (5, 12), (20, 30), (21, 22)]) == 22
    assert ps.aggregate([], steps=2)["total_ms"] == 0.0


def _fake_profile(linked: bool):
    """A stand-in for a finished torch.profiler.profile on a GPU: CPU ops (a tree) and the device events they
    launched. linked: each device event's linked_correlation_id is its launching op's id (recent torch); else
    (older torch) a cudaLaunchKernel CPU event under the op shares the device event's id (the CUPTI correlation)."""
    cpu, dev, ops = [], [], {}

    def op(name, id_, parent=None):
        e = SimpleNamespace(name=name, id=id_, device_type=DeviceType.CPU, is_async=False, cpu_parent=parent)
        if linked:
            e.linked_correlation_id = 0  # a frontend op: linked to nothing
        cpu.append(e)
        ops[id_] = e
        return e

    def kernel(name, launcher, start, end, kind="kernel", annotation=False):
        e = SimpleNamespace(name=name, id=len(dev) + 1, device_type=DeviceType.CUDA, is_async=False, cpu_parent=None,
                            is_user_annotation=annotation, time_range=SimpleNamespace(start=start, end=end))
        if linked:
            e.linked_correlation_id, e.activity_type = launcher, kind
            if launcher in ops:  # the runtime call, linked to the op; its id is the CUPTI correlation id
                cpu.append(SimpleNamespace(name="cudaLaunchKernel", id=e.id, device_type=DeviceType.CPU,
                                           is_async=False, linked_correlation_id=launcher, cpu_parent=None))
        elif launcher in ops:
            cpu.append(SimpleNamespace(name="cudaLaunchKernel", id=e.id, device_type=DeviceType.CPU, is_async=False,
                                       cpu_parent=ops[launcher]))
        dev.append(e)

    opt = op("Optimizer.step#AdamW.step", 1)
    op("aten::_fused_adamw_", 2, opt)
    loss = op("_LinearCrossEntropy", 3)
    op("aten::mm", 4, loss)
    bwd = op("autograd::engine::evaluate_function: CompiledFunctionBackward", 5)
    op("CompiledFunctionBackward", 6, bwd)
    op("aten::mm", 7)
    kernel(KERNELS["optimizer"][0], 2, 0, 100)
    kernel("Memset (Device)", 2, 100, 110, kind="gpu_memset")
    kernel("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", 4, 200, 400)
    kernel("triton_poi_fused_add_mul_5", 6, 400, 450)
    kernel("flash_bwd_dq", 6, 450, 650)
    kernel("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", 7, 700, 900)
    kernel("triton_poi_fused_add_mul_5", 7, 850, 950)  # overlaps the GEMM: counted in both sums, once in busy
    kernel("flash_fwd", 999, 1000, 1100)  # its launching op was not recorded
    kernel("## forward ##", 7, 0, 1100, kind="gpu_user_annotation", annotation=True)
    return SimpleNamespace(events=lambda: cpu + dev)


@pytest.mark.parametrize("linked", [True, False])
def test_split_attributes_kernels_to_the_ops_that_launched_them(ps, linked):
    out = ps.split(_fake_profile(linked), steps=1, device="cuda")
    ms = {c: v["ms"] for c, v in out["categories"].items()}
    assert ms == pytest.approx({"matmul": 0.2, "attention": 0.3, "elementwise_norm": 0.15, "loss_head": 0.2,
                                "optimizer": 0.11, "copy_memset": 0.0, "communication": 0.0, "other": 0.0})
    assert out["total_ms"] == out["kernel_ms"] == pytest.approx(0.96)  # the annotation is no kernel
    assert out["busy_ms"] == pytest.approx(0.91)  # 0-110, 200-650, 700-950, 1000-1100 us
    assert sum(v["share"] for v in out["categories"].values()) == pytest.approx(1.0)
    ph = out["by_phase"]
    assert ph["backward"]["total"] == pytest.approx(0.25) and ph["backward"]["attention"] == pytest.approx(0.2)
    assert ph["optimizer"]["total"] == pytest.approx(0.11) and ph["forward"]["total"] == pytest.approx(0.6)
    assert out["device_events"] == {"kernel": 7, "gpu_memset" if linked else "memset": 1,
                                    "gpu_user_annotation (not counted)": 1}
    assert out["without_launching_op"] == 1
    top = {(t["name"], t["category"]): (t["ms"], t["count"]) for t in out["top"]}
    assert len(top) == 7 and top[("triton_poi_fused_add_mul_5", "elementwise_norm")] == pytest.approx((0.15, 2))
    assert top[("Memset (Device)", "optimizer")] == pytest.approx((0.01, 1))


def test_table_side_by_side(ps):
    def prof(gemm):
        agg = ps.aggregate([("g", gemm, "matmul", "forward"), ("f", 100.0, "attention", "backward")], steps=1)
        return {**agg, "busy_ms": agg["total_ms"], "step_ms": 1.0, "status": "ok"}

    rows = [{"variant": "+bf16-master+fused-adamw", "seq": 2048, "profile": prof(300.0)},
            {"variant": "llama-fast", "seq": 2048, "profile": prof(200.0)},
            {"variant": "+selective-ckpt", "seq": 2048, "profile": {"status": "error", "message": "x"}},
            {"variant": "llama-fast", "seq": 8192}]
    lines = ps.table(rows)
    assert "2048 +bf16-master+fused-adamw" in lines[0] and "2048 llama-fast" in lines[0]
    assert "+selective-ckpt" not in lines[0]
    mm = next(line for line in lines if line.startswith("matmul"))
    assert mm.split() == ["matmul", "0.3", "75.0%", "0.2", "66.7%", "-0.1"]
    assert any(line.startswith("busy (union)") for line in lines)
    assert ps.table(rows[2:]) == []


def test_smoke_profile_on_cpu(tmp_path, capsys, monkeypatch):
    ts = load("train_speed")
    monkeypatch.setattr(ts.Bench, "head_loss", lambda self: None)  # half the run; tests/train's smoke test has it
    out = tmp_path / "train_speed.json"
    assert ts.main(["--smoke", "--profile", "--loss-steps", "0", "--variants", "+bf16-master+fused-adamw",
                    "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert row["status"] == "ok" and len(row["step_ms_samples"]) == 2 and len(row["losses"]) == 3  # unprofiled
    p = row["profile"]
    assert p["status"] == "ok" and p["steps"] == 2 and p["source"] == "CPU ops, self time" and p["busy_ms"] is None
    cats = p["categories"]
    assert list(cats) == list(ts.profile_split.CATEGORIES)
    assert all(c["ms"] >= 0 and c["count"] >= 0 and 0 <= c["share"] <= 1 for c in cats.values())
    assert sum(c["share"] for c in cats.values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(c["ms"] for c in cats.values()) == pytest.approx(p["total_ms"])
    for c in ("matmul", "attention", "elementwise_norm", "loss_head", "optimizer"):  # the fast step does each
        assert cats[c]["ms"] > 0, c
    assert sum(ph["total"] for ph in p["by_phase"].values()) == pytest.approx(p["total_ms"])
    assert p["by_phase"]["backward"]["total"] > 0 and p["by_phase"]["forward"]["total"] > 0
    top = [t["ms"] for t in p["top"]]
    assert 0 < len(top) <= 15 and top == sorted(top, reverse=True)
    assert p["step_ms"] > 0 and p["total_ms"] <= 1.5 * p["step_ms"]
    said = capsys.readouterr().out
    assert "profiled: device time per step by category" in said and "\nloss_head " in said
