#!/usr/bin/env bash
# The GPU check (issue 16, item 4): everything promptserve claims on a CUDA machine, in one run of at most
# 8 minutes, written to one markdown report.
#
#   benchmarks/gpu_check.sh                      # on a CUDA machine: report in $OUT/gpu_check.md (or ./)
#   benchmarks/gpu_check.sh --out report.md      # a file, or a directory to put gpu_check.md in
#   benchmarks/gpu_check.sh --dry-run            # any machine: imports and every step's arguments, no GPU work
#
# Steps (each under its own time limit, all within --budget-s, default 480):
#   1. the machine: nvidia-smi, torch/CUDA/Triton versions
#   2. pytest tests/kernels (the Triton kernel against the reference: fp32/fp16/bf16, ViT-B shapes, ragged)
#   3. benchmarks/attention.py: Triton kernel vs gather + concat + SDPA, batch 32/64/128, equal and ragged
#      prompt lengths, fp16 and bf16 (targets: >= 1.3x equal, >= 1.5x ragged)
#   4. benchmarks/vs_alternatives.py on ViT-B/16 at 224, fp16 then bf16: the alternatives table on the GPU; its
#      `promptserve 1 task` row is the single-task reference for the mixed-batch target (mixed >= 0.95x single)
# Installs nothing: the machine is expected to have the project's environment (make venv). A missing import
# is reported (the dry run lists them) instead of a download that an offline GPU machine could not do.
set -uo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
BUDGET_S=480
OUT_PATH="${OUT:-.}"
PY="${PYTHON:-}"
usage="usage: benchmarks/gpu_check.sh [--dry-run] [--out FILE.md|DIR] [--budget-s SECONDS] [--python PATH]"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --out) [[ $# -ge 2 ]] || { echo "gpu_check: --out needs a path. $usage" >&2; exit 2; }; OUT_PATH="$2"; shift 2 ;;
    --budget-s) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "gpu_check: --budget-s needs whole seconds. $usage" >&2; exit 2; }
                BUDGET_S="$2"; shift 2 ;;
    --python) [[ $# -ge 2 ]] || { echo "gpu_check: --python needs a path. $usage" >&2; exit 2; }; PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'. $usage" >&2; exit 2 ;;
  esac
done
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ -d "$OUT_PATH" || "$OUT_PATH" != *.md ]]; then mkdir -p "$OUT_PATH"; REPORT="$OUT_PATH/gpu_check.md"
else mkdir -p "$(dirname "$OUT_PATH")"; REPORT="$OUT_PATH"; fi

START=$(date +%s)
FAILED=0
ATTENTION_ARGS=(--batches 32 64 128)
VS_ARGS=(--sizes b --tasks 10,100,1000 --burst 32 --repeats 5 --budget-s 15 --models-mib 8192 --device cuda)

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step TITLE LIMIT_S CMD...: run CMD under min(LIMIT_S, time left - 10 s), its output into the report
step() {
  local title="$1" limit="$2"; shift 2
  local avail; avail=$(( $(left) - 10 ))
  (( limit > avail )) && limit=$avail
  {
    echo; echo "## $title"; echo; echo "\`$*\` (limit ${limit} s)"; echo; echo '```'
  } >>"$REPORT"
  if (( limit < 5 )); then
    echo "skipped: the ${BUDGET_S} s budget is spent" >>"$REPORT"; echo '```' >>"$REPORT"; FAILED=1; return
  fi
  local t0 rc; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$REPORT.step" 2>&1; rc=$?
  tail -c 20000 "$REPORT.step" >>"$REPORT"; rm -f "$REPORT.step"
  { echo '```'; echo; echo "exit status $rc, $(( $(date +%s) - t0 )) s$([[ $rc == 124 ]] && echo ', TIMED OUT')"; } >>"$REPORT"
  (( rc != 0 )) && FAILED=1
  echo "gpu_check: $title: exit $rc" >&2
}

finish() {
  echo >>"$REPORT"
  echo "Total $(( $(date +%s) - START )) s; $([[ $FAILED == 0 ]] && echo 'every step exited 0' || echo 'a step failed or timed out (see its exit status)')." >>"$REPORT"
  echo "gpu_check: report in $REPORT" >&2
  exit $FAILED
}

{
  echo "# GPU check ($([[ $DRY_RUN == 1 ]] && echo 'DRY RUN: arguments and imports only, nothing measured' || echo 'run'))"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), budget ${BUDGET_S} s"
  echo
  echo "Targets: kernel >= 1.3x (equal prompt lengths) and >= 1.5x (ragged) vs the best plain-PyTorch path"
  echo "(attention.py); mixed-task batch >= 0.95x single-task (vs_alternatives: promptserve vs promptserve 1 task)."
} >"$REPORT"

step "Machine" 30 bash -c "nvidia-smi 2>&1 | head -20 || echo 'nvidia-smi: not found'; $PY - <<'EOF'
import importlib, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('device', torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())
missing = []
for name in ('timm', 'safetensors', 'numpy', 'psutil', 'pytest', 'triton'):
    try:
        print(name, getattr(importlib.import_module(name), '__version__', '?'))
    except ImportError:
        missing.append(name)
if missing:
    raise SystemExit(f'missing imports: {missing} (make venv installs them)')
if not torch.cuda.is_available() and '$DRY_RUN' != '1':
    raise SystemExit('torch sees no CUDA device: the GPU check needs one (--dry-run checks the rest)')
EOF"

if [[ $DRY_RUN == 0 && $FAILED == 1 ]]; then
  echo "Stopped: the machine cannot run the GPU steps (see above)." >>"$REPORT"; finish
fi

if [[ $DRY_RUN == 1 ]]; then
  step "tests/kernels (collected only)" 120 "$PY" -m pytest -q --collect-only -p no:cacheprovider tests/kernels
  step "attention.py arguments" 60 bash -c "$PY benchmarks/attention.py --help | grep -q -- --batches && echo 'attention.py: --batches accepted'"
  for dtype in float16 bfloat16; do
    step "vs_alternatives.py arguments ($dtype)" 60 "$PY" benchmarks/vs_alternatives.py "${VS_ARGS[@]}" \
      --dtype "$dtype" --check-args
  done
  step "gpu_serving_check.py arguments" 120 "$PY" benchmarks/gpu_serving_check.py --size demo --check-args
else
  step "tests/kernels" 150 "$PY" -m pytest -q -p no:cacheprovider tests/kernels
  step "attention.py: Triton kernel vs gather + concat + SDPA" 75 "$PY" benchmarks/attention.py "${ATTENTION_ARGS[@]}"
  step "No host-device sync in the mixed-task forward; dtype auto on CUDA" 90 "$PY" benchmarks/gpu_serving_check.py \
    --size b
  for dtype in float16 bfloat16; do
    step "vs_alternatives.py, ViT-B/16 at 224, $dtype" 105 "$PY" benchmarks/vs_alternatives.py "${VS_ARGS[@]}" \
      --dtype "$dtype"
  done
fi

finish
