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
and, at their best precision on this machine:
  per-task OpenVINO        a fine-tuned model per task exported to OpenVINO (its default IR: weights in f16, the
                           batch size free) and compiled at the CPU's best precision (bf16 where AMX/AVX512-BF16 run
                           it natively), requests grouped by task: what a CPU user would deploy (OpenVINO Model
                           Server with a model per task)
  promptserve (best path)  promptserve on the path `serve --dtype auto --backend auto` picks here (decided as
                           start-up decides, on the demo backbone, the demo tasks and their example images; --best
                           sets it)
Workload: bursts of --burst requests (a saturated server), task of each request drawn from a Zipf law over the T
tasks (the same draws for every approach in a round). A request's latency is the time from its burst's start
to its answer (sequential answers for the unbatched and per-model ways); throughput = burst / burst time.
Approaches are timed interleaved (common.interleaved), one torch thread; ratios are paired per round.

Memory: a fresh process per task count reads its RSS with the backbone alone and after each approach's per-task
state (built in an order where nothing is freed in between, so no state reuses another's freed memory): bytes per
added task (measured); RSS = the backbone-alone process + T x that. Per-task models are built only up to
--models-mib; past that the row is extrapolated from the measured per-model footprint (marked `*`), and the
forwards cycle over the models that were built (same compute per forward; a real server would also need the
memory, or pay the load time shown in the summary for every cold model). Compiled OpenVINO models likewise: up to
--openvino-models are compiled for the memory reading (the rest extrapolated, `*`), and the bursts cycle over
--openvino-speed-models of them (fewer models than tasks: warmer caches than a real deployment, in its favour).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common as c
import numpy as np
import psutil
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from promptserve.backends import open_backend
from promptserve.hardware import cpu_has_native_bf16 as native_bf16

APPROACHES = ("per-task models", "per-model batched", "linear heads", "promptserve", "promptserve 1 task",
              "per-task OpenVINO", "promptserve (best path)")
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
         "promptserve": "prompts", "promptserve 1 task": "prompts", "per-task OpenVINO": "openvino",
         "promptserve (best path)": "best"}  # the per-task state each approach keeps


def best_path() -> tuple[str, str]:
    """(dtype, backend) that `serve --demo` with dtype and backend auto runs on this machine, decided as its start-up
    decides (server/precision.py): the demo backbone, the demo tasks, their example images as the probe."""
    import promptserve as ps
    from server.precision import decide_dtype, probe_images
    from server.settings import DEMO_BACKBONE, DEMO_TASKS_DIR

    bb = ps.Backbone.from_file(DEMO_BACKBONE)
    tasks = {p.stem: ps.PromptSet.load(p.read_bytes()) for p in sorted(Path(DEMO_TASKS_DIR).glob("*.safetensors"))}
    images = probe_images(Path(DEMO_TASKS_DIR) / "examples", bb.data_config.input_size, bb.data_config.interpolation)
    choice = decide_dtype(bb, torch.device("cpu"), tasks, images)
    return choice.dtype, choice.backend


class OpenVINOModels:
    """A compiled OpenVINO model per task: the full model exported once with a free batch size, then each task's
    copy read from its own bytes (its own weights in memory, as a model per task has) and compiled at the CPU's best
    precision: bf16 where the CPU runs it natively, else f32. `built` models; task i runs model i % built."""

    def __init__(self, bb, built: int):
        import openvino as ov

        self.precision = "bf16" if native_bf16() else "f32"
        side = bb.data_config.input_size
        vit = copy.deepcopy(bb.model).float().eval()
        with torch.no_grad():
            exported = ov.convert_model(vit, example_input=torch.zeros(1, 3, side, side),
                                        input=[ov.PartialShape([-1, 3, side, side])])
        with tempfile.TemporaryDirectory() as tmp:
            ov.save_model(exported, Path(tmp) / "model.xml")  # its default: weights stored in f16
            xml, weights = (Path(tmp) / "model.xml").read_bytes(), (Path(tmp) / "model.bin").read_bytes()
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.requests = []
        for _ in range(built):
            model = core.read_model(xml, ov.Tensor(np.frombuffer(weights, np.uint8).copy()))
            self.requests.append(core.compile_model(model, "CPU", config).create_infer_request())
        self.built = built

    def infer(self, task: int, x: torch.Tensor) -> None:
        self.requests[task % self.built].infer({0: x.float().numpy()})


class Level:
    """The per-task state of the approaches for T tasks (`kinds`: models, heads, prompts, openvino, best)."""

    def __init__(self, bb, tasks: int, models_mib: float, kinds=("models", "heads", "prompts", "openvino", "best"),
                 best: tuple[str, str] = ("float32", "torch"), openvino_models: int = 64):
        self.bb, self.tasks = bb, tasks
        if "heads" in kinds:
            g, p = torch.Generator().manual_seed(0), next(bb.model.parameters())
            self.head_w = (torch.randn(tasks, CLASSES, bb.embed_dim, generator=g) * 0.02).to(p)
            self.head_b = torch.zeros(tasks, CLASSES).to(p)
        if "prompts" in kinds or "best" in kinds:
            sets = c.prompt_sets(bb, tasks, visual=VISUAL, kv=KV, classes=CLASSES)
            self.prompted, self.names = c.prompted_model(bb, sets)
        if "best" in kinds:
            self.best = open_backend(best[1], bb, "cpu", getattr(torch, best[0]))
            for name, ps in zip(self.names, sets, strict=True):
                self.best.model.add_task(name, ps)
        if "openvino" in kinds:
            self.openvino = OpenVINOModels(bb, min(tasks, openvino_models))
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
        return by_task(x, burst, now, lambda task, images: self.model_for(task)(images))

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

    def per_task_openvino(self, x, burst, now):
        return by_task(x, burst, now, self.openvino.infer)

    def promptserve_best_path(self, x, burst, now):
        t0 = now()
        self.best(x, [self.names[t] for t in burst])
        return [now() - t0] * len(burst)

    def promptserve_1_task(self, x, burst, now):
        """The same burst as if every request were for the most popular task: the single-task reference."""
        return self.promptserve(x, [0] * len(burst), now)


def by_task(x, burst, now, run) -> list[float]:
    """One forward per distinct task of the burst, `run(task, its images)`, in order of first arrival (a multi-model
    server's dynamic batching); a request is answered when its task's forward ends."""
    t0, done = now(), [0.0] * len(burst)
    groups: dict[int, list[int]] = {}
    for j, task in enumerate(burst):
        groups.setdefault(task, []).append(j)
    for task, idx in groups.items():
        run(task, x[idx])
        t = now() - t0
        for j in idx:
            done[j] = t
    return done


def probe_memory(size: str, tasks: int, models_mib: float, device: str, dtype: str, best: tuple[str, str],
                 openvino_models: int) -> dict:
    """In a fresh process, RSS before and after each approach's per-task state, built in an order where nothing
    is freed before a reading (freed memory would be reused by the next state and hide its cost): heads, full
    models, the prompt bank, the best path's bank, compiled OpenVINO models. The prompt sets are generated before
    the banks' first reading (a server frees a set once its bank row holds it)."""
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
    if device == "cpu":
        backend = open_backend(best[1], bb, "cpu", getattr(torch, best[0]))
        before = rss(device)
        for name, ps in zip(model[1], sets, strict=True):
            backend.model.add_task(name, ps)
        out["best"] = dict(base=before, after=rss(device), built=tasks, keep=backend)
        before = rss(device)
        compiled = OpenVINOModels(bb, min(tasks, openvino_models))
        out["openvino"] = dict(base=before, after=rss(device), built=compiled.built, keep=compiled)
    base = out["heads"]["base"]  # the backbone alone: every row is "this process with only that approach"
    return {kind: dict(base=base, added=r["after"] - r["base"], built=r["built"]) for kind, r in out.items()}


def measured_memory(size: str, tasks: int, args) -> dict:
    cmd = [sys.executable, __file__, "--probe", f"{size}:{tasks}", "--models-mib", str(args.models_mib),
           "--device", args.device, "--dtype", args.dtype, "--best", args.best,
           "--openvino-models", str(args.openvino_models)]
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
    approaches = APPROACHES if args.device == "cpu" else APPROACHES[:5]  # OpenVINO runs on the CPU
    out = []
    for tasks in task_levels:
        memory = measured_memory(size, tasks, args)
        if memory["models"]["extrapolated"]:
            print(f"  {tasks} tasks: full models past --models-mib {args.models_mib:.0f}; their memory is "
                  f"extrapolated from {memory['models']['per_task'] / 2**20:.1f} MiB per model")
        if "openvino" in memory and memory["openvino"]["extrapolated"]:
            print(f"  {tasks} tasks: {args.openvino_models} compiled OpenVINO models measured; the rest extrapolated "
                  f"from {memory['openvino']['per_task'] / 2**20:.1f} MiB per model")
        level = Level(bb, tasks, args.models_mib, kinds=tuple(STATE[a] for a in approaches),
                      best=tuple(args.best.split(":")), openvino_models=args.openvino_speed_models)
        bursts = zipf_bursts(tasks, rounds + 1, args.burst, args.zipf)
        latencies: dict[str, list[float]] = {a: [] for a in approaches}
        fns = {}
        for name in approaches:
            method = getattr(level, re.sub(r"\W+", "_", name).strip("_").lower())
            feed = iter(bursts if size != "b" else bursts[1:])  # ViT-B: no warm-up round

            def call(method=method, feed=feed, out=latencies[name]):
                out.extend(method(x, next(feed), now))
            fns[name] = call
        with torch.inference_mode():
            times = c.interleaved(fns, rounds, warmup=0 if size == "b" else 1, budget_s=args.budget_s,
                                  clock=args.clock)
        if size != "b":  # drop the warm-up round's latencies
            for name in approaches:
                latencies[name] = latencies[name][args.burst:]
        distinct = np.mean([len(set(b)) for b in bursts[1:len(times["promptserve"]) + 1]])
        ps_rss = memory["prompts"]["rss"]
        for name in approaches:
            t, mem = times[name], memory[STATE[name]]
            out.append(dict(size=label, tasks=tasks, approach=name, distinct=distinct, rss=mem["rss"], base=mem["base"],
                            per_task=mem["per_task"], extrapolated=mem["extrapolated"], rss_vs_ps=mem["rss"] / ps_rss,
                            throughput=args.burst / c.summary(t, "median"),
                            p50=c.percentile(latencies[name], 50), p99=c.percentile(latencies[name], 99),
                            vs_ps=c.paired_spread(times["promptserve"], t), n=len(t)))
        out[-1]["load_ms"] = load_time_ms(level.models[0])
        if "promptserve (best path)" in times:
            out[-1]["best_vs_openvino"] = c.paired_spread(times["per-task OpenVINO"],
                                                          times["promptserve (best path)"])
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
    parser.add_argument("--best", default="auto", help="DTYPE:BACKEND of `promptserve (best path)` (default: what "
                        "serve's dtype and backend auto pick here, e.g. bfloat16:openvino)")
    parser.add_argument("--openvino-models", type=int, default=200,
                        help="compiled OpenVINO models built for the memory reading; past it extrapolated")
    parser.add_argument("--openvino-speed-models", type=int, default=64,
                        help="compiled OpenVINO models the bursts cycle over")
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # SIZE:TASKS, the memory child (probe_memory)
    c.engine_flags(parser)
    args = parser.parse_args()
    if args.probe:
        size, tasks = args.probe.split(":")
        c.set_threads(args.threads)
        print(json.dumps(probe_memory(size, int(tasks), args.models_mib, args.device, args.dtype,
                                      tuple(args.best.split(":")), args.openvino_models)))
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
    if args.device == "cpu":
        if args.best == "auto":
            args.best = ":".join(best_path())
            print(f"promptserve (best path): {args.best.replace(':', ' on ')}, what `serve --dtype auto --backend "
                  "auto` picks on this machine (decided on the demo backbone and tasks, as its start-up decides)")
        else:
            print(f"promptserve (best path): {args.best.replace(':', ' on ')} (--best)")
        print(f"per-task OpenVINO: compiled at {'bf16' if native_bf16() else 'f32'} (the CPU's best precision)\n")
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
    goal = [r for r in rows if "best_vs_openvino" in r]
    if goal:
        by = {(r["size"], r["tasks"], r["approach"]): r for r in rows}
        c.table(["backbone", "tasks", "promptserve (best path) images/s", "per-task OpenVINO images/s",
                 "speed ratio (q1-q3)", "KiB per added task: promptserve (best path)", "KiB per added task: OpenVINO",
                 "memory per task ratio"],
                [[r["size"], f"{r['tasks']:,}", f"{r['throughput']:.1f}",
                  f"{(ov := by[r['size'], r['tasks'], 'per-task OpenVINO'])['throughput']:.1f}",
                  r["best_vs_openvino"], f"{r['per_task'] / 1024:,.1f}", f"{ov['per_task'] / 1024:,.1f}"
                  + ("*" if ov["extrapolated"] else ""), f"1/{ov['per_task'] / r['per_task']:,.0f}"] for r in goal],
                f"### promptserve (best path: {args.best.replace(':', ' on ')}) vs a compiled OpenVINO model per task "
                "(goal: speed ratio >= 1.0 at <= 1/10 of the memory per task)")
    print(f"{time.perf_counter() - start:.2f} s wall")


if __name__ == "__main__":
    main()
