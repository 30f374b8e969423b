"""The Triton prompt-KV attention kernel equals the plain-torch reference (docs/design.md, the promises).

On a CPU these run in Triton's interpreter (tests/kernels/conftest.py sets TRITON_INTERPRET=1), which is slow:
shapes stay small. The kernel module is imported inside the tests, after the conftest ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import prompt_attention, resolve_impl
from kernels.reference import prompt_attention_reference
from tests.gpu import has_cuda, kernel_device, requires_cuda, requires_kernel

pytestmark = requires_kernel
ATOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=requires_cuda)]  # interpreter: bf16 wrong


def make_inputs(B=4, H=2, N=37, d=32, T=4, P=16, lens=(0, 16, 5, 11), tasks=(3, 1, 0, 2), pads=None,
                dtype=torch.float32, timm_views=True, shared_kv=True, seed=0):
    """q, k, v (B, H, N, d), the bank (T, H, P, d) and the index tensors; P=None means no prompts at all."""
    g = torch.Generator().manual_seed(seed)
    dev = kernel_device()
    if timm_views:  # exactly what timm's Attention hands over: strided views of one qkv tensor
        qkv = torch.randn(B, N, 3 * H * d, generator=g).to(dev, dtype)
        q, k, v = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (torch.randn(B, H, N, d, generator=g).to(dev, dtype) for _ in range(3))
    pk = pv = None
    if P is not None:
        pk = torch.randn(T, H, P, d, generator=g).to(dev, dtype)
        pv = pk if shared_kv else torch.randn(T, H, P, d, generator=g).to(dev, dtype)
    inputs = dict(q=q, k=k, v=v, prompt_k=pk, prompt_v=pv,
                  task_index=torch.tensor(tasks, device=dev), prompt_len=torch.tensor(lens, device=dev))
    if pads is not None:
        inputs["pad_start"] = torch.tensor([s for s, _ in pads], device=dev)
        inputs["pad_end"] = torch.tensor([e for _, e in pads], device=dev)
    return inputs


def check_against_reference(inputs, dtype, **launch):
    from kernels.triton_attention import prompt_attention_triton

    B, H, N, d = inputs["q"].shape
    out = torch.full((B, N, H * d), float("nan"), dtype=dtype, device=inputs["q"].device)  # unwritten rows stay NaN
    got = prompt_attention_triton(**inputs, out=out, **launch)
    want = prompt_attention_reference(**inputs)
    assert got is out and got.dtype == dtype
    assert not got.isnan().any(), f"{int(got.isnan().any(-1).sum())} output rows never written"
    torch.testing.assert_close(got.float(), want.float(), atol=ATOL[dtype], rtol=0)


CASES = {
    # every sample a different task; lengths 0, P_max and ragged; pads at the start, empty, at the end
    "ragged": dict(pads=[(1, 4), (0, 0), (30, 37), (5, 5)]),
    "prompt_len_0_to_64": dict(B=4, N=21, P=64, lens=(0, 64, 33, 17), tasks=(1, 3, 2, 0), pads=[(1, 9)] * 4),
    "equal_lengths_no_pad": dict(lens=(16, 16, 16, 16)),  # the reference's mask-free path
    "no_prompts": dict(B=3, N=65, P=None, tasks=(0, 0, 0), pads=[(1, 5), (1, 1), (60, 65)]),
    "empty_bank": dict(B=2, T=2, P=0, lens=(0, 0), tasks=(1, 0), pads=[(1, 3), (0, 0)]),
    "tasks_shared": dict(B=3, T=2, lens=(7, 2), tasks=(1, 1, 0), shared_kv=False, timm_views=False),
    "single_token": dict(B=2, N=1, T=2, lens=(3, 0), tasks=(0, 1)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, dtype):
    check_against_reference(make_inputs(dtype=dtype, **CASES[case]), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_64_two_query_blocks(dtype):
    inputs = make_inputs(B=2, N=65, d=64, T=3, P=8, lens=(8, 3, 0), tasks=(2, 1), pads=[(1, 6), (62, 65)],
                         dtype=dtype)
    check_against_reference(inputs, dtype)


def test_head_dim_not_a_power_of_two():
    check_against_reference(make_inputs(B=2, N=19, d=24, T=2, lens=(16, 4), tasks=(1, 0)), torch.float32)


def test_small_blocks_unaligned_ranges():
    """Many key blocks per source, and own-key ranges that start in the middle of a block."""
    inputs = make_inputs(B=3, N=50, T=3, lens=(16, 9, 1), tasks=(1, 2, 0), pads=[(3, 20), (1, 2), (17, 50)])
    check_against_reference(inputs, torch.float32, block_m=16, block_n=16)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vit_b_shapes_on_gpu(dtype):
    """ViT-B/16 with 10 visual prompt slots, 8 tasks with ragged lengths (GPU only: too slow interpreted)."""
    lens = (0, 64, 10, 50, 33, 1, 64, 17)
    pads = [(1, 1 + 10 - (n % 11)) for n in range(16)]
    inputs = make_inputs(B=16, H=12, N=207, d=64, T=8, P=64, lens=lens, tasks=[i % 8 for i in range(16)],
                         pads=pads, dtype=dtype)
    check_against_reference(inputs, dtype)


# ---- launcher checks ------------------------------------------------------------------------------------------

def _bad(**change):
    inputs = make_inputs(B=2, T=2, lens=(3, 5), tasks=(0, 1), pads=[(1, 2), (1, 1)])
    inputs.update(change)
    return inputs


@pytest.mark.parametrize(("change", "message"), [
    (lambda i: dict(k=i["k"].half()), "dtype"),
    (lambda i: dict(q=i["q"].long(), k=i["k"].long(), v=i["v"].long()), "supported dtypes"),
    (lambda i: dict(v=i["v"][:, :, :-1]), "shape"),
    (lambda i: dict(prompt_k=i["prompt_k"][:, :1], prompt_v=i["prompt_k"][:, :1]), "prompt_k has shape"),
    (lambda i: dict(prompt_v=None), "both"),
    (lambda i: dict(task_index=torch.tensor([0, 2], device=i["q"].device)), "task_index must be in"),
    (lambda i: dict(task_index=torch.tensor([0, -1], device=i["q"].device)), "task_index must be in"),
    (lambda i: dict(task_index=torch.tensor([0], device=i["q"].device)), "task_index has shape"),
    (lambda i: dict(task_index=i["task_index"].float()), "int64"),
    (lambda i: dict(prompt_len=torch.tensor([3, 17], device=i["q"].device)), "prompt_len must be in"),
    (lambda i: dict(pad_end=torch.tensor([2, 38], device=i["q"].device)), "pad ranges"),
    (lambda i: dict(pad_start=torch.tensor([3, 1], device=i["q"].device)), "pad ranges"),
    (lambda i: dict(pad_end=None), "both"),
    (lambda i: dict(q=i["q"].transpose(2, 3).contiguous().transpose(2, 3)), "contiguous head dim"),
], ids=["dtype_mix", "int_dtype", "shape", "bank_heads", "prompt_v_none", "task_too_big", "task_negative",
        "task_shape", "task_float", "prompt_len_over_P", "pad_past_N", "pad_reversed", "pad_end_none", "stride"])
def test_launcher_rejects_bad_inputs(change, message, monkeypatch):
    from kernels.triton_attention import CHECKS_ENV, prompt_attention_triton

    monkeypatch.setenv(CHECKS_ENV, "1")  # value checks read the indices back (a host sync): on request only
    inputs = _bad()
    inputs.update(change(inputs))
    with pytest.raises(ValueError, match=message):
        prompt_attention_triton(**inputs)


@pytest.mark.parametrize(("shape", "transpose", "message"), [((2, 37, 63), False, "out has shape"),
                                                             ((2, 64, 37), True, "contiguous channels")])
def test_launcher_rejects_bad_out(shape, transpose, message):
    from kernels.triton_attention import prompt_attention_triton

    inputs = _bad()
    out = torch.empty(shape, device=inputs["q"].device)
    with pytest.raises(ValueError, match=message):
        prompt_attention_triton(**inputs, out=out.transpose(1, 2) if transpose else out)


def test_inference_only():
    from kernels.triton_attention import prompt_attention_triton

    inputs = _bad(q=_bad()["q"].clone().requires_grad_())
    with pytest.raises(RuntimeError, match="impl='reference'"):
        prompt_attention_triton(**inputs)
    with torch.no_grad():
        torch.testing.assert_close(prompt_attention_triton(**inputs), prompt_attention_reference(**inputs),
                                   atol=1e-5, rtol=0)


# ---- the dispatcher -------------------------------------------------------------------------------------------

def test_dispatcher_impl_argument():
    inputs = make_inputs(B=2, T=2, lens=(16, 5), tasks=(1, 0), pads=[(1, 4), (0, 0)])
    torch.testing.assert_close(prompt_attention(**inputs, impl="triton"), prompt_attention(**inputs, impl="reference"),
                               atol=1e-5, rtol=0)


def test_dispatcher_environment_variable(monkeypatch):
    import kernels.triton_attention as kernel_module

    calls = []
    real = kernel_module.prompt_attention_triton
    monkeypatch.setattr(kernel_module, "prompt_attention_triton", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    inputs = make_inputs(B=2, T=2, lens=(16, 5), tasks=(1, 0), pads=[(1, 4), (0, 0)])

    monkeypatch.setenv("PROMPTSERVE_ATTENTION", "triton")
    with torch.no_grad():
        by_kernel = prompt_attention(**inputs)
    assert calls == [1]
    monkeypatch.setenv("PROMPTSERVE_ATTENTION", "reference")
    by_reference = prompt_attention(**inputs)
    assert calls == [1]
    torch.testing.assert_close(by_kernel, by_reference, atol=1e-5, rtol=0)

    monkeypatch.setenv("PROMPTSERVE_ATTENTION", "auto")
    assert resolve_impl(inputs["q"]) == ("triton" if has_cuda() else "reference")  # CPU tensors: reference
    monkeypatch.setenv("PROMPTSERVE_ATTENTION", "fast")
    with pytest.raises(ValueError, match="not one of"):
        resolve_impl(inputs["q"])


# ---- the compiled kernel, without a GPU -----------------------------------------------------------------------

_COMPILE = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels.triton_attention import _block_config, _prompt_attention_fwd as fn
names, ptrs, index = fn.arg_names, ("Q", "K", "V", "PK", "PV", "Out"), ("TaskIndex", "PromptLen", "PadStart", "PadEnd")
for dtype, ty, d, has_prompts, has_pad in [(torch.float16, "fp16", 64, True, True),
                                           (torch.bfloat16, "bf16", 128, True, False),
                                           (torch.float32, "fp32", 32, False, True)]:
    bm, bn, warps = _block_config(d, dtype)
    const = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=max(16, triton.next_power_of_2(d)),
                 HAS_PROMPTS=has_prompts,
                 HAS_PAD=has_pad, DOT_PRECISION="ieee" if ty == "fp32" else "tf32")
    sig = {n: "constexpr" if n in const else "*" + ty if n in ptrs else "*i64" if n in index else
           "fp32" if n == "qk_scale" else "i32" for n in names}
    # what the launcher sees at ViT shapes: 16-byte aligned pointers, strides divisible by 16
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in ptrs or n.startswith("stride")}
    src = ASTSource(fn, sig, constexprs={(names.index(n),): v for n, v in const.items()}, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=2))
    assert "cubin" in k.asm, ty
"""


@pytest.mark.skipif(has_cuda(), reason="on a GPU the other tests run the compiled kernel")
def test_compiles_for_sm90_without_a_gpu():
    """The interpreter accepts things the compiler refuses (loop-carried types, constexpr use): compile the
    kernel for an H100 (sm_90) with Triton's bundled ptxas, no GPU needed, in a process without the interpreter."""
    triton_dir = Path(pytest.importorskip("triton").__file__).parent
    if not (triton_dir / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _COMPILE], env=env, cwd=root, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
