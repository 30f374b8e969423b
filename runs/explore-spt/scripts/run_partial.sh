#!/bin/bash
# usage: PARTIAL=stem|nostem|firstK|lastK|attn|mlp run_partial.sh NAME TASK full LR   (run.sh with partial_ft.py)
SCRIPT=runs/explore-spt/scripts/partial_ft.py exec "$(dirname "$0")/run.sh" "$@"
