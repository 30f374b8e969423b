"""docs/performance.md's summary and every benchmark output it shows, and the README's benchmark figures, made from
the records the benchmarks write (runs/bench/<name>.md, benchmarks/common.py: recorded), so that no figure in the
docs can differ from the run it came from.

    python tools/perf_summary.py            # rewrite the generated parts of docs/performance.md and README.md
    python tools/perf_summary.py --check    # exit 1 if they differ from runs/bench/ (tests/unit/test_perf_tables.py)

A generated part sits between `<!-- generated: KEY -->` and `<!-- end generated: KEY -->`: KEY `runs/bench/NAME.md`
is that record as it is; the others are made below (`summary`, `readme-*`). A record that could not be made anew
starts with a `Not regenerated: why` line above the last output it had; the summary says so on each of its rows.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: tools/ is on sys.path, the repository is not
    sys.path.insert(0, str(REPO))
from tools.bench_records import (  # noqa: E402
    BENCH,
    RESULTS,
    Record,
    Table,
    kib_text,
    mean_accuracy,
    met,
    mib_text,
    number,
    read,
    results_backbone,
    shown,
)

DOCS = (REPO / "docs" / "performance.md", REPO / "README.md")
REGION = re.compile(r"<!-- generated: (?P<key>[^ ]+) -->(?P<body>.*?)<!-- end generated: (?P=key) -->", re.S)
GPU_ONLY = "GPU-only: not run (no GPU was lent to this project's sessions so far)"
# the training method whose accuracy each approach of the README's alternatives table serves
METHOD = {"per-task models": "full", "per-model batched": "full", "per-task OpenVINO": "full",
          "promptserve": "e2vpt", "promptserve (best path)": "e2vpt", "linear heads": "linear"}


# ---- the summary ----------------------------------------------------------------------------------------------
RECORDS = ("mixed_batch", "mixed_batch_b", "task_scaling", "pruning", "cold_load", "serve_load", "store",
           "vs_alternatives", "vs_alternatives_b", "serving_precision", "openvino_backend", "train_step",
           "unknown_names_rss", "attention", "perf_analyzer", "ray_affinity", "http_precision",
           "http_precision_before")  # the records the summary quotes


def summary_rows(bench: Path) -> list[list[str]]:
    """[claim, target, measured, met, record] per claim, in the order the page has always listed them."""
    rec = {name: read(name, bench) for name in RECORDS}
    return [*engine_rows(rec), *cold_rows(rec["cold_load"]), *http_rows(rec["serve_load"]), *store_rows(rec["store"]),
            *alternatives_rows(rec["vs_alternatives"], rec["vs_alternatives_b"]),
            *precision_rows(rec["serving_precision"], rec["openvino_backend"], rec["train_step"]),
            *http_precision_rows(rec["http_precision"], rec["http_precision_before"]), *other_rows(rec)]


def engine_rows(rec: dict[str, Record]) -> list[list[str]]:
    mixed = [rec["mixed_batch"].table("Summary"), rec["mixed_batch"].table("Summary"), rec["mixed_batch_b"].table(
        "Summary")]
    sizes = ["demo", "ViT-Ti", "ViT-B"]

    def at(t: Table, column: str, size: str) -> str:
        return t.cell(column, {"backbone": size + "*"})

    worst = [at(t, "worst mixed", s) for t, s in zip(mixed, sizes, strict=True)]
    regroup = number(at(mixed[0], "mixed 32 vs regroup", "demo"))
    flop = [number(at(t, "measured / FLOP", s)) for t, s in zip(mixed, sizes, strict=True)]
    both = f"{rec['mixed_batch'].source}; {rec['mixed_batch_b'].source}"
    scaling = rec["task_scaling"].table("batch 32")
    many = [number(scaling.cell("vs 1 task", {"resident tasks": "1,000", "popularity": p})) for p in
            ("uniform", "zipf")]
    prune = rec["pruning"].table("single-task batches")
    share, theory = prune.headers.index("saving / FLOP saving"), prune.headers.index("FLOP saving")
    rows = [(r[0], r[1], number(r[share]), number(r[theory])) for r in prune.rows if r[share] != "-"]
    worst_share = min(s for _, _, s, t in rows if t >= 5)
    small = ", ".join(f"{v}/{k} {s:.2f}" for v, k, s, t in rows if t < 5)
    return [
        ["mixed-task batch vs single-task batch, demo / ViT-Ti / ViT-B", ">= 0.9x",
         " / ".join(f"{number(w):.2f}x" for w in worst) + " (the worst of " + ", ".join(w.split(":")[0] for w in worst)
         + ")", met(min(map(number, worst)) >= 0.9), both],
        ["32 tasks in a batch of 32 vs regrouping per task, demo backbone", ">= 1.5x", f"{regroup:.2f}x",
         met(regroup >= 1.5), rec["mixed_batch"].source],
        ["same at 224 (reported, no target)", "-", " / ".join(
            f"{s} {number(at(t, 'mixed 32 vs regroup', s)):.2f}x" for t, s in zip(mixed[1:], sizes[1:], strict=True)),
         "-", both],
        ["prompt overhead vs bare backbone / FLOP ratio, demo / ViT-Ti / ViT-B", "0.9..1.1",
         " / ".join(f"{f:.3f}" for f in flop), met(all(0.9 <= f <= 1.1 for f in flop)), both],
        ["1,000 resident tasks vs 1 task", ">= 0.9x", f"{many[0]:.2f}x (uniform), {many[1]:.2f}x (Zipf)",
         met(min(many) >= 0.9), rec["task_scaling"].source],
        ["pruning: measured saving / FLOP saving", ">= 0.8", f"{worst_share:.2f}, the worst row with >= 5% FLOP "
         f"saving; rows under 5% (visual/kv kept): {small}", met(worst_share >= 0.8) + " (rows under 5% are noise)",
         rec["pruning"].source]]


def cold_rows(rec: Record) -> list[list[str]]:
    cold, upload = rec.table("Cold load (Engine"), rec.table("Upload")
    local, redis = (number(cold.cell("p50", {"store": s})) for s in ("local", "redis"))
    set_size = re.search(r"prompt set ([\d.]+ MB)", cold.title)
    servable = [number(upload.cell("servable p50", {"store": s})) for s in ("local", "redis")]
    first = number(upload.cell("first prediction p50", {"store": "local"}))
    return [[f"cold load p50, ViT-B-sized set ({set_size.group(1) if set_size else '?'}), local / Redis",
             "<= 5 / <= 10 ms", f"{local:.1f} / {redis:.1f} ms", met(local <= 5 and redis <= 10), rec.source],
            ["upload -> servable p50, local / Redis", "<= 50 ms", f"{servable[0]:.1f} / {servable[1]:.1f} ms (the "
             f"first prediction then waits for one ViT-B forward: {first:,.0f} ms p50 local)",
             met(max(servable) <= 50), rec.source]]


def other_rows(rec: dict[str, Record]) -> list[list[str]]:
    names = rec["unknown_names_rss"].table("unknown task names")
    growth = number(names.cell("bytes per name"))
    loop = number(rec["attention"].table().cell("loop / reference", {"batch": "32", "tasks": "8",
                                                                      "lengths": "ragged"}))
    analyzer = rec["perf_analyzer"].table()
    top = max(analyzer.rows, key=lambda r: int(r[1]))[1]  # the highest concurrency measured
    ray = rec["ray_affinity"].table("affinity vs round-robin")
    return [
        ["server memory growth for distinct unknown task names", "< 5 MB per 100,000",
         f"{growth * 1e5 / 1e6:.1f} MB per 100,000 ({growth:.0f} bytes per name over {names.rows[0][0]} names)",
         met(growth * 1e5 < 5e6), rec["unknown_names_rss"].source],
        ["CPU prompt attention, one mixed batch vs a loop per task (ViT-B layer, batch 32, 8 ragged tasks; "
         "reported)", "-", f"the loop takes {loop:.2f}x the mixed call's time", "-", rec["attention"].source],
        [f"perf_analyzer over the Open Inference Protocol, concurrency {top}, HTTP / gRPC (reported)", "-",
         " / ".join(f"{number(analyzer.cell('inferences/s', {'protocol': p, 'concurrency': top})):.0f}"
                    for p in ("http", "grpc")) + " inferences/s", "-", rec["perf_analyzer"].source],
        ["GPU check (`benchmarks/gpu_check.sh`, `benchmarks/gpu_serving_check.py`)",
         "kernel >= 1.3x / 1.5x, mixed >= 0.95x", GPU_ONLY, "-", "-"],
        ["Ray Serve, routing by task vs task-blind (affinity / round-robin)", "fewer cold loads, lower p99",
         ", ".join(f"{what} {ray.cell('ratio', {'affinity vs round-robin': what})}" for what in
                   ("cold loads", "p99 latency", "throughput")), "see the section", rec["ray_affinity"].source]]


def http_rows(rec: Record) -> list[list[str]]:
    load = rec.table("HTTP load")
    ok = sum(int(number(r[2])) for r in load.rows)
    errors = sum(int(number(r[load.headers.index("errors")])) for r in load.rows)
    uploads = [r[load.headers.index("uploads/errors")].split("/") for r in load.rows if r[1] == "yes"]
    up_ok, up_errors = sum(int(u[0]) for u in uploads), sum(int(u[1]) for u in uploads)
    c1 = [number(load.cell("latency - compute", {"concurrency": "1", "uploads every 0.5 s": s})) for s in
          ("no", "yes")]
    c64 = [number(load.cell("req/s / engine", {"concurrency": "64", "uploads every 0.5 s": s})) for s in
           ("no", "yes")]
    return [["HTTP, zero errors incl. hot swaps", "0", f"{errors + up_errors} errors in {ok:,} requests and {up_ok} "
             "uploads", met(errors + up_errors == 0), rec.source],
            ["HTTP, concurrency 1: latency p50 - the batch's compute p50 (no swaps / swaps)", "<= 15 ms",
             f"{c1[0]:.1f} / {c1[1]:.1f} ms", met(max(c1) <= 15), rec.source],
            ["HTTP, concurrency 64: req/s vs the engine's batched images/s, without uploads", ">= 0.8x",
             f"{c64[0]:.2f}x", met(c64[0] >= 0.8), rec.source],
            ["same with an upload every 0.5 s (issue 16)", ">= 0.9x", f"{c64[1]:.2f}x", met(c64[1] >= 0.9),
             rec.source]]


def store_rows(rec: Record) -> list[list[str]]:
    t = rec.table("Registry")
    get = [number(t.cell("p50", {"backend": b, "operation": "get*"})) for b in ("local", "redis")]
    first, p99 = (number(t.cell(c, {"backend": "local", "operation": "list 10,000, first"})) for c in ("p50", "p99"))
    return [["registry get p50 (0.5 MB set), local / Redis", "<= 2 / <= 5 ms", f"{get[0]:.2f} / {get[1]:.2f} ms",
             met(get[0] <= 2 and get[1] <= 5), rec.source],
            ["local store, first `list()` of 10,000 tasks", "< 1 s", f"{first / 1e3:.2f} s p50 (p99 {p99 / 1e3:.2f} s)",
             met(first < 1000), rec.source]]


def alternatives_rows(rec: Record, rec_b: Record) -> list[list[str]]:
    demo, b = rec.table("Serving T tasks"), rec_b.table("Serving T tasks")

    def at(t: Table, approach: str, column: str, tasks: str = "1,000") -> str:
        return t.cell(column, {"tasks": tasks, "approach": approach})

    def memory(t: Table) -> str:
        rss = [mib_text(at(t, a, "RSS")) for a in ("promptserve", "per-task models")]
        per = [kib_text(number(at(t, a, "KiB per added"))) for a in ("promptserve", "per-task models")]
        return (f"{number(at(t, 'per-task models', 'memory vs')):.0f}x less RSS ({rss[0]} vs {rss[1]}); {per[0]} vs "
                f"{per[1]} per added task")

    speeds = " / ".join(f"{number(at(demo, a, 'speed vs')):.2f}x" for a in
                        ("per-task models", "per-model batched", "linear heads"))
    mixed = [1 / number(demo.cell("speed vs", {"tasks": n, "approach": "promptserve 1 task"})) for n in
             ("10", "100", "1,000")]
    return [*openvino_goal_rows(rec),
            ["vs one fully fine-tuned model per task, 1,000 tasks, demo backbone: memory", "-", memory(demo), "-",
             rec.source],
            ["same on ViT-B/16 at 224", "-", memory(b), "-", rec_b.source],
            ["same: images/s of per-task models / per-model batched / linear heads, vs promptserve", "-", speeds,
             "-", rec.source],
            ["mixed-task burst vs the same burst all one task (demo, 10 / 100 / 1,000 tasks)", ">= 0.95x",
             " / ".join(f"{m:.2f}x" for m in mixed), met(min(mixed) >= 0.95), rec.source]]


def openvino_goal_rows(rec: Record) -> list[list[str]]:
    """promptserve on its best path against a compiled OpenVINO model per task (issue 22 item 4), when the record
    has them (a run before that item, or on CUDA, has not)."""
    found = [t for t in rec.tables if "vs a compiled OpenVINO model per task" in t.title]
    if not found:
        return []
    goal, row = found[0], {"tasks": "1,000"}
    path = goal.title.split("promptserve (best path: ", 1)[1].split(")", 1)[0]
    speed = number(goal.cell("speed ratio", row))
    ours, theirs = (number(goal.cell(f"KiB per added task: {who}", row)) for who in ("promptserve", "OpenVINO"))
    extrapolated = " (extrapolated past the models built)" if goal.cell("KiB per added task: OpenVINO", row).endswith(
        "*") else ""
    return [[f"promptserve on its best path ({path}) vs a compiled OpenVINO model per task (bf16 where native), 1,000 "
             "tasks, Zipf(1), demo size: images/s; memory per added task", ">= 1.0x at <= 1/10 of the memory",
             f"{speed:.2f}x {goal.cell('speed ratio', row).split(' ', 1)[1]}; {kib_text(ours)} vs "
             f"{kib_text(theirs)}{extrapolated} per added task (1/{theirs / ours:,.0f})",
             met(speed >= 1.0 and theirs >= 10 * ours), rec.source]]


def precision_rows(rec: Record, openvino: Record, train: Record) -> list[list[str]]:
    t = rec.table("Engine forward")

    def speed(variant: str) -> str:
        found = [r for r in t.rows if r[0] == variant]
        if found and found[0][3] != "-":
            return f"{number(found[0][3]):.2f}x"
        return f"{variant}: not measured in this run ({found[0][-1] if found else 'not among its --variants'})"

    agree = [t.cell("top-1 agree", {"variant": v}) for v in ("bf16", "bf16-autocast")
             if any(r[0] == v for r in t.rows)]
    step = train.table("One pretraining step")
    backends = openvino.table("batch 32 over")
    return [["engine forward in bf16 (weights / autocast) vs fp32, this CPU", "-",
             f"{speed('bf16')} / {speed('bf16-autocast')}, top-1 agreement {' / '.join(agree)}", "-", rec.source],
            ["channels-last / torch.compile vs fp32", "-", f"{speed('channels-last')} / {speed('compile')}", "-",
             rec.source],
            ["OpenVINO vs torch float32, engine forward, demo-sized backbone (random weights), batch 32: "
             "float32 / bfloat16 (reported; torch bfloat16 beside)", "-",
             " / ".join(f"{number(backends.cell('x torch float32', {'variant': v})):.2f}x"
                        for v in ("openvino float32", "openvino bfloat16"))
             + f" (torch bfloat16 {number(backends.cell('x torch float32', {'variant': 'torch bfloat16'})):.2f}x)",
             "-", openvino.source],
            ["a pretraining step in bf16 autocast vs float32 (reported)", "-",
             f"{number(step.cell('speed vs', {'variant': 'bf16 autocast'})):.2f}x", "-", train.source]]


def http_precision_rows(rec: Record, before: Record) -> list[list[str]]:
    after, was = rec.table("HTTP throughput"), before.table("HTTP throughput")
    path = after.title.split("default (", 1)[1].split(")", 1)[0]

    def ratios(t: Table) -> list[float]:
        return [number(t.cell("default / float32", {"images per request": n})) for n in ("32", "1")]

    now, then = ratios(after), ratios(was)
    engine = number(after.cell("engine default", {"images per request": "32"}))
    return [[f"HTTP images/s, the default path ({path}) vs float32 torch, 32-image / 1-image requests, demo backbone",
             ">= 1.8x", f"{now[0]:.2f}x / {now[1]:.2f}x (before the request path's cuts {then[0]:.2f}x / "
             f"{then[1]:.2f}x; the engine alone {engine:.2f}x)", met(min(now) >= 1.8), rec.source]]


def http_profile(bench: Path = BENCH) -> str:
    """Before and after the request path's cuts: CPU ms per image by where it went, from both records' profiles."""
    after, before = (read(name, bench).table("Profile of the default server")
                     for name in ("http_precision", "http_precision_before"))
    lines = ["| where the server's CPU went | 32 img/request, before | after | 1 img/request, before | after |",
             "|---|---|---|---|---|"]
    for row in after.rows:
        cells = [f"{t.cell(f'{n} img/request: CPU ms/img', {'where': row[0]})} ms "
                 f"({t.cell(f'{n} img/request: share', {'where': row[0]})})"
                 for n in ("32", "1") for t in (before, after)]
        lines.append(f"| {row[0]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def summary(bench: Path = BENCH) -> str:
    rows = summary_rows(bench)
    lines = ["| claim | target | measured | met | record |", "| --- | --- | --- | --- | --- |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join([*lines, "", beside(bench)])


def beside(bench: Path) -> str:
    """What else used the CPU while the regenerated records were measured, from their 'beside it' facts."""
    seen: dict[str, list[int]] = {}
    records = [read(p.stem, bench) for p in sorted(bench.glob("*.md"))]
    fresh = [r for r in records if not r.stale]
    for r in fresh:
        for part in r.facts.get("beside it (other processes, share of one core over the run)", "").split("; "):
            if found := re.fullmatch(r"(`.+`) \(nice (-?\d+)\) (\d+)%", part):
                seen.setdefault(f"{found.group(1)} (nice {found.group(2)})", []).append(int(found.group(3)))
    parts = [f"{who} in {len(shares)} of them, " + (f"{min(shares)}-{max(shares)}%" if len(shares) > 1 else
                                                     f"{shares[0]}%") + " of a core"
             for who, shares in sorted(seen.items(), key=lambda kv: -len(kv[1]))]
    return (f"What else ran: the {len(fresh)} regenerated records name the other processes that used more than 5% of "
            f"a core during the run: {'; '.join(parts) or 'none'}. Each record's facts give the load average before "
            "and after it.")


# ---- the README's figures -------------------------------------------------------------------------------------
def readme_alternatives(bench: Path = BENCH, results: Path = RESULTS) -> str:
    t = read("vs_alternatives", bench).table("Serving T tasks")
    has_best = any(r[2] == "promptserve (best path)" for r in t.rows)
    lines = ["| approach | memory per added task | RSS, 1,000 tasks | images/s vs promptserve | accuracy¹ |",
             "|---|---|---|---|---|"]
    names = {"per-task models": "a fine-tuned model per task (TorchServe / Triton style)",
             "per-model batched": "the same, batched per model",
             "per-task OpenVINO": "a fine-tuned model per task compiled by OpenVINO (bf16 where native), batched "
                                  "per model",
             "promptserve": "**promptserve** (mixed-task batches, float32 torch)",
             "promptserve (best path)": "**promptserve** on its best path here²",
             "linear heads": "one backbone + a linear head per task"}
    accuracy = mean_accuracy(sorted(set(METHOD.values())), results)
    for approach, label in names.items():
        if not has_best and approach in ("per-task OpenVINO", "promptserve (best path)"):
            continue  # a record from before these rows (or a run on CUDA)
        row = {"tasks": "1,000", "approach": approach}
        speed = f"{number(t.cell('speed vs', row)):.2f}x"
        lines.append(f"| {label} | {kib_text(number(t.cell('KiB per added', row)))} | {mib_text(t.cell('RSS', row))} "
                     f"| {speed} | {accuracy[METHOD[approach]]}% ({METHOD[approach]}) |")
    backbone = results_backbone(results)
    lines += ["", f"¹ Mean test accuracy over the results sweep's tasks ({shown(results)}/tables.md, "
                  f"docs/results.md) on the backbone `{backbone.stem}` (its card: [{backbone.with_suffix('.md')}]"
                  f"({backbone.with_suffix('.md')})); the speed and memory columns are "
                  "benchmarks/vs_alternatives.py's, on random weights of the demo size."]
    if has_best:
        printed = read("vs_alternatives", bench).text.split("promptserve (best path): ", 1)[1]
        path = printed.split(",")[0].split(" (")[0]
        lines.append(f"² {path}: what `serve --dtype auto --backend auto` picks on this machine.")
    return "\n".join(lines)


def readme_store(bench: Path = BENCH) -> str:
    t = read("store", bench).table("Registry")
    get = [number(t.cell("p50", {"backend": b, "operation": "get*"})) for b in ("local", "redis")]
    first = number(t.cell("p50", {"backend": "local", "operation": "list 10,000, first"}))
    return (f"get p50 {get[0]:.2f} ms local, {get[1]:.2f} ms Redis; first `list()` of 10,000 local tasks "
            f"{first / 1e3:.2f} s p50 (target 1 s)")


def readme_benchmarks(bench: Path = BENCH) -> str:
    """The README's one-line digest: the summary's measured column for a few of its claims, as the summary has it."""
    measured = {claim: figure for claim, _, figure, _, _ in summary_rows(bench)}

    def of(claim: str) -> str:
        return next(figure for name, figure in measured.items() if name.startswith(claim))

    return (f"mixed-task batch {of('mixed-task batch').split(' (')[0]} of single-task (demo / ViT-Ti / ViT-B); 32 "
            f"tasks per batch {of('32 tasks in a batch')} of regrouping (demo); 1,000 resident tasks "
            f"{of('1,000 resident tasks')} of one; cold load p50 {of('cold load p50')} (local / Redis); HTTP "
            f"{of('HTTP, zero errors')}, {of('HTTP, concurrency 64')} of the engine's throughput at concurrency 64")


# ---- writing --------------------------------------------------------------------------------------------------
def alternatives_accuracy(bench: Path = BENCH, results: Path = RESULTS) -> str:
    """The accuracy each approach buys, as the README's alternatives table quotes it (one sentence)."""
    accuracy, backbone = mean_accuracy(sorted(set(METHOD.values())), results), results_backbone(results)
    return (f"full fine-tuning (a model per task, torch or OpenVINO) {accuracy['full']}%, promptserve's E2VPT "
            f"{accuracy['e2vpt']}%, linear heads {accuracy['linear']}%: the mean test accuracy over the results "
            f"sweep's tasks on `{backbone.stem}` ({shown(results)}/tables.md; its card "
            f"[{backbone.with_suffix('.md')}](../{backbone.with_suffix('.md')}); docs/results.md).")


MADE = {"summary": summary, "readme-alternatives": readme_alternatives, "readme-store": readme_store,
        "readme-benchmarks": readme_benchmarks, "http-profile": http_profile,
        "alternatives-accuracy": alternatives_accuracy}


def rendered(doc: str, bench: Path = BENCH) -> str:
    """`doc` with every generated part made anew from the records in `bench`."""
    def fill(m: re.Match) -> str:
        key, body = m.group("key"), m.group("body")
        if key.startswith("runs/bench/"):
            text = read(Path(key).stem, bench).text
        elif key in MADE:
            text = MADE[key](bench)
        else:
            raise LookupError(f"unknown generated part '{key}'")
        text = f"\n{text}\n" if body.startswith("\n") else text  # a block stays a block, a span inside a line a span
        return f"<!-- generated: {key} -->{text}<!-- end generated: {key} -->"

    return REGION.sub(fill, doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a doc differs")
    args = parser.parse_args()
    stale = []
    for doc in DOCS:
        now = doc.read_text()
        new = rendered(now)
        if new != now:
            stale.append(str(doc.relative_to(REPO)))
            if not args.check:
                doc.write_text(new)
    print(("differ from runs/bench/: " if args.check else "rewrote: ") + (", ".join(stale) or "nothing"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
