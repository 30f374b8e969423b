"""promptserve against what a user would deploy instead, side by side in one run: memory, throughput, latency.

    python benchmarks/vs_alternatives.py                          # demo backbone, 10 / 100 / 1,000 tasks
    python benchmarks/vs_alternatives.py --sizes demo,b --budget-s 240
    python benchmarks/vs_alternatives.py --sizes b --tasks 10,100 --burst 16

Four ways to serve T tasks on one backbone architecture (random weights: speed and memory do not depend on them):
  per-task models   one fully fine-tuned copy of the model per task, one forward per request (TorchServe /
                    Triton with a model per task and no batching)
  per-model batched the same models, requests grouped by task: one forward per distinct task of the burst (a
                    multi-model server's dynamic batching)
  linear heads      one frozen backbone, features once for the whole burst, a linear head per task (the
                    cheapest baseline)
  promptserve       one frozen backbone, one mixed-task forward with each task's E2VPT prompts (10 visual + 10
                    key/value prompts per layer) and head
Workload: bursts of --burst requests (a saturated server), task of each request drawn from a Zipf law over the T
tasks (the same draws for every approach in a round). A request's latency is the time from its burst's start
to its answer (sequential answers for the unbatched and per-model ways); throughput = burst / burst time.
Approaches are timed interleaved (common.interleaved), one torch thread; ratios are paired per round.

Memory: a fresh process per task count reads its RSS with the backbone alone and after each approach's per-task
state (built in an order where nothing is freed in between, so no state reuses another's freed memory): bytes per
added task (measured); RSS = the backbone-alone process + T x that. Per-task models are built only up to
--models-mib; past that the row is extrapolated from the measured per-model footprint (marked `*`), and the
forwards cycle over the models that were built (same compute per forward; a real server would also need the
memory, or pay the load time shown in the summary for every cold model).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import subprocess
import sys
import time

import common as c
import numpy as np
import psutil
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

APPROACHES = ("per-task models", "per-model batched", "linear heads", "promptserve", "promptserve 1 task")
CLASSES, VISUAL, KV = 10, 10, 10


def rss(device: str = "cpu") -> int:
    """Resident memory: the process's RSS, or on CUDA the bytes torch holds on the device."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def placed_backbone(size: str, device: str, dtype: str):
    """The size's backbone on `device` in `dtype` (its fingerprint hashed first, as the engine does)."""
    bb = c.backbone(size)
    bb.fingerprint  # noqa: B018 - before the cast, so the random prompt sets match it
    bb.model.to(device=device, dtype=getattr(torch, dtype))
    return bb


def zipf_bursts(tasks: int, bursts: int, size: int, s: float, seed: int = 0) -> list[list[int]]:
    p = 1.0 / np.arange(1, tasks + 1) ** s
    rng = np.random.default_rng(seed)
    return [rng.choice(tasks, size=size, p=p / p.sum()).tolist() for _ in range(bursts)]


STATE = {"per-task models": "models", "per-model batched": "models", "linear heads": "heads",
         "promptserve": "prompts", "promptserve 1 task": "prompts"}  # the per-task state each approach keeps


class Level:
    """The per-task state of the approaches for T tasks (`kinds`: models, heads, prompts)."""

    def __init__(self, bb, tasks: int, models_mib: float, kinds=("models", "heads", "prompts")):
        self.bb, self.tasks = bb, tasks
        if "heads" in kinds:
            g, p = torch.Generator().manual_seed(0), next(bb.model.parameters())
            self.head_w = (torch.randn(tasks, CLASSES, bb.embed_dim, generator=g) * 0.02).to(p)
            self.head_b = torch.zeros(tasks, CLASSES).to(p)
        if "prompts" in kinds:
            sets = c.prompt_sets(bb, tasks, visual=VISUAL, kv=KV, classes=CLASSES)
            self.prompted, self.names = c.prompted_model(bb, sets)
        if "models" in kinds:
            param_bytes = sum(p.numel() * p.element_size() for p in bb.model.parameters())
            self.models_built = max(1, min(tasks, int(models_mib * 2**20 // param_bytes)))
            self.models = []
            for i in range(self.models_built):  # a fine-tuned model per task: every weight its own
                m = copy.deepcopy(bb.model)
                with torch.no_grad():
                    m.head.weight.add_(i * 1e-3)
                self.models.append(m)


    def model_for(self, task: int):
        return self.models[task % self.models_built]

    # ---- one burst per approach: returns per-request completion times (seconds after the burst start) --
    def per_task_models(self, x, burst, now):
        t0, done = now(), []
        for j, task in enumerate(burst):
            self.model_for(task)(x[j:j + 1])
            done.append(now() - t0)
        return done

    def per_model_batched(self, x, burst, now):
        t0, done = now(), [0.0] * len(burst)
        groups: dict[int, list[int]] = {}
        for j, task in enumerate(burst):
            groups.setdefault(task, []).append(j)
        for task, idx in groups.items():  # in order of first arrival
            self.model_for(task)(x[idx])
            t = now() - t0
            for j in idx:
                done[j] = t
        return done

    def linear_heads(self, x, burst, now):
        t0 = now()
        vit = self.bb.model
        feats = vit.forward_head(vit.forward_features(x), pre_logits=True)  # (B, D), once for all tasks
        ti = torch.as_tensor(burst, device=x.device)
        torch.baddbmm(self.head_b[ti].unsqueeze(-1), self.head_w[ti], feats.unsqueeze(-1))
        return [now() - t0] * len(burst)

    def promptserve(self, x, burst, now):
        t0 = now()
        self.prompted(x, [self.names[t] for t in burst])
        return [now() - t0] * len(burst)

    def promptserve_1_task(self, x, burst, now):
        """The same burst as if every request were for the most popular task: the single-task reference."""
        return self.promptserve(x, [0] * len(burst), now)


def probe_memory(size: str, tasks: int, models_mib: float, device: str, dtype: str) -> dict:
    """In a fresh process, RSS before and after each approach's per-task state, built in an order where nothing
    is freed before a reading (freed memory would be reused by the next state and hide its cost): heads, full
    models, then the prompt bank. The prompt sets are generated before the bank's first reading (a server frees
    a set once its bank row holds it)."""
    bb = placed_backbone(size, device, dtype)
    out = {}
    for kind in ("heads", "models"):
        before = rss(device)
        level = Level(bb, tasks, models_mib, kinds=(kind,))
        out[kind] = dict(base=before, after=rss(device), built=getattr(level, "models_built", tasks), keep=level)
    sets = c.prompt_sets(bb, tasks, visual=VISUAL, kv=KV, classes=CLASSES)
    before = rss(device)
    model = c.prompted_model(bb, sets)
    out["prompts"] = dict(base=before, after=rss(device), built=tasks, keep=model)
    base = out["heads"]["base"]  # the backbone alone: every row is "this process with only that approach"
    return {kind: dict(base=base, added=r["after"] - r["base"], built=r["built"]) for kind, r in out.items()}


def measured_memory(size: str, tasks: int, args) -> dict:
    cmd = [sys.executable, __file__, "--probe", f"{size}:{tasks}", "--models-mib", str(args.models_mib),
           "--device", args.device, "--dtype", args.dtype]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"memory probe {size}:{tasks} failed: {done.stderr.strip()[-500:]}")
    out = {}
    for kind, probe in json.loads(done.stdout.strip().splitlines()[-1]).items():
        per_task = probe["added"] / probe["built"]
        out[kind] = dict(base=probe["base"], per_task=per_task, rss=probe["base"] + per_task * tasks,
                         extrapolated=probe["built"] < tasks)
    return out


def load_time_ms(model) -> float:
    """Seconds to bring one full model in from its serialised bytes (what loading on demand costs per cold task,
    the disk read aside)."""
    data = save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()})
    fresh = copy.deepcopy(model)
    t0 = time.perf_counter()
    fresh.load_state_dict(load_safetensors(data))
    return 1e3 * (time.perf_counter() - t0)


def run_size(size: str, task_levels: list[int], args) -> list[dict]:
    bb = placed_backbone(size, args.device, args.dtype)
    _, _, label = c.SIZES[size]
    x = c.images(bb, args.burst).to(next(bb.model.parameters()))
    clock = c.CLOCKS[args.clock]
    if args.device == "cuda":
        def now():
            torch.cuda.synchronize()  # a time stamp means the work queued before it is done
            return clock()
    else:
        now = clock
    rounds = args.repeats or (1 if size == "b" else 8)
    out = []
    for tasks in task_levels:
        memory = measured_memory(size, tasks, args)
        if memory["models"]["extrapolated"]:
            print(f"  {tasks} tasks: full models past --models-mib {args.models_mib:.0f}; their memory is "
                  f"extrapolated from {memory['models']['per_task'] / 2**20:.1f} MiB per model")
        level = Level(bb, tasks, args.models_mib)
        bursts = zipf_bursts(tasks, rounds + 1, args.burst, args.zipf)
        latencies: dict[str, list[float]] = {a: [] for a in APPROACHES}
        fns = {}
        for name in APPROACHES:
            method = getattr(level, name.replace("-", "_").replace(" ", "_"))
            feed = iter(bursts if size != "b" else bursts[1:])  # ViT-B: no warm-up round

            def call(method=method, feed=feed, out=latencies[name]):
                out.extend(method(x, next(feed), now))
            fns[name] = call
        with torch.inference_mode():
            times = c.interleaved(fns, rounds, warmup=0 if size == "b" else 1, budget_s=args.budget_s,
                                  clock=args.clock)
        if size != "b":  # drop the warm-up round's latencies
            for name in APPROACHES:
                latencies[name] = latencies[name][args.burst:]
        distinct = np.mean([len(set(b)) for b in bursts[1:len(times["promptserve"]) + 1]])
        ps_rss = memory["prompts"]["rss"]
        for name in APPROACHES:
            t, mem = times[name], memory[STATE[name]]
            out.append(dict(size=label, tasks=tasks, approach=name, distinct=distinct, rss=mem["rss"], base=mem["base"],
                            per_task=mem["per_task"], extrapolated=mem["extrapolated"], rss_vs_ps=mem["rss"] / ps_rss,
                            throughput=args.burst / c.summary(t, "median"),
                            p50=c.percentile(latencies[name], 50), p99=c.percentile(latencies[name], 99),
                            vs_ps=c.paired_spread(times["promptserve"], t), n=len(t)))
        out[-1]["load_ms"] = load_time_ms(level.models[0])
        print(f"  {label}, {tasks} tasks: {len(times['promptserve'])} rounds", flush=True)
        del level
        gc.collect()
    return out


def record_name(args) -> str:
    """vs_alternatives.md for the default run (demo backbone on the CPU); other runs get their own record (a ViT-B
    run takes minutes, a GPU run another machine), e.g. vs_alternatives_b.md, vs_alternatives_b_cuda_float16.md."""
    parts = [args.sizes.replace(",", "_")] if args.sizes != "demo" else []
    parts += [args.device, args.dtype] if args.device != "cpu" or args.dtype != "float32" else []
    return "_".join(["vs_alternatives", *parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo", help="comma list of demo, ti, b (default demo; b: ViT-B/16 224)")
    parser.add_argument("--tasks", default="10,100,1000", help="comma list of task counts")
    parser.add_argument("--burst", type=int, default=32, help="requests per burst (the engine's max batch)")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of task popularity")
    parser.add_argument("--repeats", type=int, help="interleaved rounds per level (default: demo 8, b 1)")
    parser.add_argument("--budget-s", type=float, default=40.0, help="seconds per task level after which no new "
                                                                    "round starts (at least one round runs)")
    parser.add_argument("--models-mib", type=float, default=3072.0,
                        help="memory for full per-task models; past it their rows are extrapolated")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: GPU memory instead of "
                        "RSS, wall clock (--clock is ignored)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--check-args", action="store_true", help="validate the arguments (not the device) and exit "
                        "(benchmarks/gpu_check.sh --dry-run)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # SIZE:TASKS, the memory child (probe_memory)
    c.engine_flags(parser)
    args = parser.parse_args()
    if args.probe:
        size, tasks = args.probe.split(":")
        c.set_threads(args.threads)
        print(json.dumps(probe_memory(size, int(tasks), args.models_mib, args.device, args.dtype)))
        return
    try:
        levels = [int(t) for t in args.tasks.split(",")]
        sizes = [s for s in args.sizes.split(",") if s]
    except ValueError:
        parser.error(f"--tasks {args.tasks!r}: a comma list of integers, e.g. 10,100,1000")
    bad = [s for s in sizes if s not in c.SIZES]
    if bad or min(levels) < 1 or args.burst < 1:
        parser.error(f"--sizes: one of {', '.join(c.SIZES)} (got {bad}); --tasks and --burst must be >= 1")
    if args.check_args:
        print(f"vs_alternatives: arguments ok ({' '.join(sys.argv[1:])})")
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    if args.device == "cpu" and args.dtype == "float16":
        parser.error("--dtype float16 on the CPU is not supported (use float32 or bfloat16)")
    if args.device == "cuda":
        args.clock = "wall"  # CPU time says nothing about GPU work
    with c.recorded(record_name(args)):
        measure(args, sizes, levels)


def measure(args, sizes: list[str], levels: list[int]) -> None:
    c.engine_setup(args)
    start = time.perf_counter()
    rows = []
    for size in sizes:
        rows += run_size(size, levels, args)
    memory = "GPU MiB (torch)" if args.device == "cuda" else "RSS MiB"
    print(f"{memory} of a process with the backbone alone (python, torch, timm, one model): "
          f"{rows[0]['base'] / 2**20:,.0f} MiB\n")
    clock = args.clock
    c.table(["backbone", "tasks", "approach", memory, "KiB per added task", "memory vs promptserve",
             f"images/{clock}-s", "speed vs promptserve (q1-q3)", f"p50 {clock} ms", f"p99 {clock} ms", "n"],
            [[r["size"], f"{r['tasks']:,}", r["approach"], f"{r['rss'] / 2**20:,.0f}" + ("*" if r["extrapolated"]
                                                                                         else ""),
              f"{r['per_task'] / 1024:,.1f}", f"{r['rss_vs_ps']:.2f}x", f"{r['throughput']:.1f}", r["vs_ps"],
              f"{1e3 * r['p50']:,.0f}", f"{1e3 * r['p99']:,.0f}", r["n"]] for r in rows],
            f"### Serving T tasks: bursts of {args.burst} requests, Zipf({args.zipf}) task popularity, "
            f"{args.device} {args.dtype}, {torch.get_num_threads()} torch thread(s) (* = extrapolated from the "
            "measured per-model footprint)")
    for r in rows:
        if "load_ms" in r:
            print(f"{r['size']}, {r['tasks']:,} tasks: loading one full model from its bytes takes "
                  f"{r['load_ms']:.1f} ms wall (the cost of each cold task when models load on demand); "
                  f"mean distinct tasks per burst {r['distinct']:.1f}")
    print(f"{time.perf_counter() - start:.2f} s wall")


if __name__ == "__main__":
    main()
