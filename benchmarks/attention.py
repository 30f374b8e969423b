"""Prompt-KV attention at ViT-B/16 shapes: what one mixed-task batch costs per attention layer.

    python benchmarks/attention.py            # CUDA if present, else the CPU table
    python benchmarks/attention.py --cpu      # the CPU table even on a GPU machine

On CUDA: the Triton kernel (prompts read from the bank, padded keys skipped) against the reference
(gather bank rows + concat + mask + SDPA), fp16 and bf16, batch 1..128, 1 and 8 tasks per batch, equal and
ragged prompt lengths. Equal lengths need no mask, so SDPA may take its flash path; ragged ones need a mask.
On the CPU (where the reference is the serving path): the reference against a per-task loop (group samples
by task, concatenate that task's prompts, one SDPA per task), i.e. what serving tasks separately would cost.
Both timed paths include the host syncs they do in production (the reference's mask test, the launcher's
index checks).
"""

from __future__ import annotations

import argparse
import time

import common as c  # puts the repository on sys.path
import torch
import torch.nn.functional as F

from kernels.reference import prompt_attention_reference

HEADS, HEAD_DIM, PATCHES = 12, 64, 196  # ViT-B/16 at 224 px
VISUAL, KV = 10, 16  # bank maxima: visual prompt slots in the sequence, key/value prompts per layer
RAGGED_KV = (16, 2, 9, 0, 12, 5, 16, 7)  # per task, when lengths are ragged
RAGGED_VISUAL = (10, 4, 7, 0, 10, 2, 8, 5)


def vit_b_inputs(batch: int, tasks: int, ragged: bool, dtype: torch.dtype, device: str, seed: int = 0) -> dict:
    """One layer's attention inputs for a batch of `batch` samples spread round-robin over `tasks` tasks."""
    g = torch.Generator(device=device).manual_seed(seed)
    N, D = 1 + VISUAL + PATCHES, HEADS * HEAD_DIM  # sequence: [CLS, visual prompt slots, patches]
    qkv = torch.randn(batch, N, 3 * D, generator=g, device=device, dtype=dtype)  # timm's fused qkv output
    q, k, v = qkv.reshape(batch, N, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, N, d) views
    bank = torch.randn(tasks, HEADS, KV, HEAD_DIM, generator=g, device=device, dtype=dtype)  # shared K/V prompts
    kv_len = [RAGGED_KV[t] if ragged else KV for t in range(tasks)]
    visual = [RAGGED_VISUAL[t] if ragged else VISUAL for t in range(tasks)]
    task_index = torch.arange(batch, device=device) % tasks
    pad_start = torch.tensor([1 + visual[t] for t in task_index.tolist()], device=device)  # unused slots of
    pad_end = torch.full((batch,), 1 + VISUAL, device=device)  # tasks with fewer visual prompts than the bank
    return dict(q=q, k=k, v=v, prompt_k=bank, prompt_v=bank, task_index=task_index,
                prompt_len=torch.tensor(kv_len, device=device), pad_start=pad_start, pad_end=pad_end)


def per_task_loop(q, k, v, prompt_k, prompt_v, task_index, prompt_len, pad_start, pad_end):
    """Serving each task on its own: per task, its prompts concatenated to its samples' own keys (padded
    slots dropped), one mask-free SDPA, results scattered back. Returns (B, N, H * d)."""
    B, H, N, d = q.shape
    out = q.new_empty(B, H, N, d)
    for t in task_index.unique().tolist():
        rows = (task_index == t).nonzero().squeeze(1)
        whole = len(rows) == B  # one task in the batch: no row gather, as a single-task server would do
        qt, kt, vt = (q, k, v) if whole else (q[rows], k[rows], v[rows])
        s, e, n = int(pad_start[rows[0]]), int(pad_end[rows[0]]), int(prompt_len[t])  # same for the whole task
        pk, pv = (p[t, :, :n].expand(len(rows), H, n, d) for p in (prompt_k, prompt_v))
        kt = torch.cat([pk, kt[:, :, :s], kt[:, :, e:]], dim=2)  # (b_t, H, n + N - (e - s), d)
        vt = torch.cat([pv, vt[:, :, :s], vt[:, :, e:]], dim=2)
        o = F.scaled_dot_product_attention(qt, kt, vt)
        if whole:
            out = o
        else:
            out[rows] = o
    return out.transpose(1, 2).reshape(B, N, H * d)


def time_cpu(fns: list, reps: int) -> list[float]:
    """Best wall time of `reps` calls of each function, in ms, after one warm-up call each. The calls are
    interleaved and the minimum is kept, so that load from other processes hits every function alike."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(reps):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return [1e3 * t for t in best]


def cpu_table(batches: list[int], reps: int) -> None:
    print(f"CPU ({torch.get_num_threads()} threads), fp32, ViT-B/16 attention layer: N = 1 + {VISUAL} + {PATCHES}, "
          f"{HEADS} heads, d = {HEAD_DIM}, key/value prompts <= {KV}; best of {reps} interleaved calls")
    print("No GPU here: the Triton kernel's speed is NOT measured; run this script on a CUDA machine for it.\n")
    rows = []
    for batch in batches:
        for tasks in sorted({1, min(8, batch)}):
            for ragged in (False, True):
                x = vit_b_inputs(batch, tasks, ragged, torch.float32, "cpu")
                with torch.inference_mode():
                    diff = (prompt_attention_reference(**x) - per_task_loop(**x)).abs().max().item()
                    ref, loop = time_cpu([lambda x=x: prompt_attention_reference(**x),
                                          lambda x=x: per_task_loop(**x)], reps)
                rows.append([batch, tasks, "ragged" if ragged else "equal", f"{ref:.2f}", f"{loop:.2f}",
                             f"{loop / ref:.2f}x", f"{diff:.1e}"])
    c.table(["batch", "tasks", "lengths", "reference ms", "per-task ms", "loop / reference", "max |diff|"], rows)


def cuda_table(batches: list[int]) -> None:
    from triton.testing import do_bench

    from kernels.triton_attention import prompt_attention_triton

    print(f"{torch.cuda.get_device_name()}, ViT-B/16 attention layer: N = 1 + {VISUAL} + {PATCHES}, {HEADS} heads, "
          f"d = {HEAD_DIM}, key/value prompts <= {KV}; median ms (triton.testing.do_bench)\n")
    rows = []
    for dtype in (torch.float16, torch.bfloat16):
        for batch in batches:
            for tasks in sorted({1, min(8, batch)}):
                for ragged in (False, True):
                    x = vit_b_inputs(batch, tasks, ragged, dtype, "cuda")
                    with torch.inference_mode():
                        diff = (prompt_attention_reference(**x).float() - prompt_attention_triton(**x).float())
                        ref = do_bench(lambda x=x: prompt_attention_reference(**x), return_mode="median")
                        ker = do_bench(lambda x=x: prompt_attention_triton(**x), return_mode="median")
                    rows.append([str(dtype)[6:], batch, tasks, "ragged" if ragged else "equal", f"{ref:.3f}",
                                 f"{ker:.3f}", f"{ref / ker:.2f}x", f"{diff.abs().max().item():.1e}"])
    c.table(["dtype", "batch", "tasks", "lengths", "reference ms", "kernel ms", "speed-up", "max |diff|"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the CPU table even when CUDA is present")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default: 1 8 32 64 128 on CUDA, "
                                                                "1 8 32 on the CPU)")
    parser.add_argument("--reps", type=int, default=11, help="timed calls per CPU measurement")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (default 1: steadier ratios on a machine shared with other jobs)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    on_gpu = torch.cuda.is_available() and not args.cpu
    with c.recorded("attention_cuda" if on_gpu else "attention"):
        if on_gpu:
            cuda_table(args.batches or [1, 8, 32, 64, 128])
        else:
            cpu_table(args.batches or [1, 8, 32], args.reps)


if __name__ == "__main__":
    main()
