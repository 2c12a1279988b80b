#!/usr/bin/env bash
# The paper's evaluation protocol in miniature on the trained toy world (../shared/toyworld):
# makes docs/eval-toyworld/ (report.md, report.json, precision_vs_time.png, grid.png,
# ablations.md). Run from the repository root:
#
#     bash docs/eval-toyworld/make.sh [WORK]
#
# WORK (default eval-toyworld-run/) keeps the input scenes, every prediction and the metric caches;
# running again resumes. About 15 CPU-minutes (measured on 2 cores shared with other work).
set -euo pipefail
WORK=${1:-eval-toyworld-run}
DOCS=$(dirname "$0")
T=${BLENDEDIT_SHARED:-$(cd "$DOCS/../../.." && pwd)/shared}/toyworld
N=24

# Inputs: the first N held-out scenes of the world's generator (seed 1), 64x64 PNGs.
if [ ! -d "$WORK/scenes" ]; then
    python -c "from blendedit.eval.toyworld import main; main(['scenes', '$WORK/scenes', '--n', '$N'])"
fi

# Same inputs, rectangles, prompts (the classifier's 30 captions) and seeds for every run.
COMMON=(--images "$WORK/scenes" --n-images "$N" --seed 0 --batch 8 --steps 25 --size 64
        --guidance 5 --model "$T/toy-sd" --clip-model "$T/toy-clip"
        --score-clip-model "$T/toy-clip" --classifier "$T/classifier.safetensors"
        --device cpu --dtype fp32 --quiet)

blendedit eval "${COMMON[@]}" --out "$WORK/main" \
    --methods latent,latent-decoded,latent-decoder,diffusers-inpaint
# Ablations of BLD (latent): the control without the prompt's guidance, a later blend start,
# progressive shrinking forced on (auto leaves these rectangles alone). "No ranking" is the
# "first generated" column of every run.
blendedit eval "${COMMON[@]}" --out "$WORK/guidance-0" --methods latent --guidance 0
blendedit eval "${COMMON[@]}" --out "$WORK/blend-start-0.5" --methods latent --blend-start 0.5
blendedit eval "${COMMON[@]}" --out "$WORK/shrink-on" --methods latent --mask-shrink on

python "$DOCS/summarize.py" "$WORK" "$DOCS" "$T"
