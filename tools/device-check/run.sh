#!/usr/bin/env bash
# The device check of issue 12, run on the GPU machine in ONE device call (README.md beside this):
#   1. install the carried wheels (.whl/) into $DEVICE_CHECK_SITE (default /tmp/site), put them and
#      src/ on PYTHONPATH, and record the machine and package versions (probe.py -> env.json);
#   2. the `gpu`-marked tests (only the test files that have one: the others need packages the
#      device lacks, such as gradio and ray, to be collected);
#   3. `blendedit bench` for each row of PLAN below that the bench defines, each under its own time
#      limit and all under DEVICE_CHECK_BUDGET_S (default 470 s: the whole run under 8 minutes);
#   4. append-results.py --section-only -> section.md, the markdown for docs/benchmarks.md.
# Files in $OUT (at most 8 come back): run.log, env.json, pytest.xml, steps.tsv, bench.md,
# bench.json, section.md. A step that fails or runs out of time is recorded; the later ones run.
#
# Environment: OUT (set by the device tool; else a new /tmp/device-check.XXXXXX), PYTHON
# (python3), DEVICE_CHECK_DRY=1 (CPU dry run: each bench row on its tiny counterpart, 2 images,
# 4 steps; compile rows skipped; GPU tests collected and skipped), DEVICE_CHECK_ONLY=name,name
# (run only these steps: a rerun of what failed), DEVICE_CHECK_WHEELS (.whl), DEVICE_CHECK_SITE.
set -u -o pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
DRY=${DEVICE_CHECK_DRY:-0}
SLOW=1  # a dry run on a shared CPU gets 4x each limit and a 30-minute budget
if [ "$DRY" = 1 ]; then SLOW=4; fi
BUDGET=${DEVICE_CHECK_BUDGET_S:-$((DRY == 1 ? 1800 : 470))}
ONLY=${DEVICE_CHECK_ONLY:-}
WHEELS=${DEVICE_CHECK_WHEELS:-$ROOT/.whl}
SITE=${DEVICE_CHECK_SITE:-/tmp/site}
if [ -z "${OUT:-}" ]; then OUT=$(mktemp -d /tmp/device-check.XXXXXX); fi
if [ -e "$OUT/steps.tsv" ]; then  # never add to (or overwrite) an earlier run's results
  echo "run.sh: OUT=$OUT already holds a run (steps.tsv); give an empty folder" >&2
  exit 2
fi
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

# One row per bench run: step name | preset | CPU dry-run preset (- = skip in a dry run) |
# time limit (s) | bench arguments besides --preset/--device/--report. A preset the bench does not
# define (yet) is skipped with a line, as is a row whose flags the bench lacks; ?--flag is passed
# only where the bench has it (--realtime: the preset's few-step config, blendedit.config).
# Estimated on an H200 (README.md): 55, 120, 85, 110 and 40 s; setup 15 s, GPU tests 25 s before.
PLAN=$(
  cat <<'EOF'
sd2-base-bf16|sd2-base|tiny|75|--batch 24 --dtype bf16 --repeats 1
sd2-base-bf16-compile|sd2-base|-|130|--batch 24 --dtype bf16 --compile --no-diffusers --repeats 1
sdxl-bf16|sdxl|tiny-sdxl|100|--dtype bf16 --repeats 1
flux-schnell-realtime|flux-schnell|tiny-flux|120|--dtype bf16 ?--realtime --batch 8 --steps 4 --scheduler flow-euler --repeats 1 --no-diffusers
flux2-klein-4b-realtime|flux2-klein-4b|tiny-flux2-klein|75|--dtype bf16 ?--realtime --batch 8 --steps 4 --scheduler flow-euler --repeats 1 --no-diffusers
sd2-base-bf16-deepcache|sd2-base|tiny|75|--batch 24 --dtype bf16 --cache deepcache --no-diffusers --repeats 1
sd35-medium-bf16-first-block|sd35-medium|-|120|--batch 4 --dtype bf16 --cache first-block --no-diffusers --repeats 1
sd35-medium-bf16-first-block-compile|sd35-medium|-|180|--batch 4 --dtype bf16 --cache first-block --compile --no-diffusers --repeats 1
EOF
)

T0=$SECONDS
record() {  # record NAME STATUS SECONDS DETAIL
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$OUT/steps.tsv"
}

wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

step() {  # step NAME LIMIT_S COMMAND...: run under min(limit, budget left), record the outcome
  local name=$1 limit=$(($2 * SLOW))
  shift 2
  local left=$((BUDGET - (SECONDS - T0)))
  if [ "$left" -lt $((limit / 2)) ]; then  # too short to finish: leave the time to the call
    echo "== $name: SKIPPED, ${left}s of the ${BUDGET}s budget left, it may need ${limit}s"
    record "$name" skipped 0 "budget: ${left}s left"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, $((SECONDS - T0))s into the run): $*"
  local t=$SECONDS rc status
  timeout -k 10 "$limit" "$@"
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "== $name: $status in $((SECONDS - t))s"
  record "$name" "$status" $((SECONDS - t)) "$*"
}

main() {
  echo "== device check: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), OUT=$OUT, dry=$DRY, budget ${BUDGET}s"
  # 1. Wheels, then the probe (imports blendedit as the bench does).
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --disable-pip-version-check --target "$SITE" "$WHEELS"/*.whl || {
      echo "run.sh: installing the wheels from $WHEELS failed" >&2
      record install "failed" $((SECONDS - T0)) "$WHEELS"
      return 1
    }
    export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "run.sh: no wheels in $WHEELS (tools/device-check/fetch-wheels.sh makes them)" >&2
    export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
  local probe
  probe=$("$PY" "$HERE/probe.py" --out "$OUT" --site "$SITE" --budget "$BUDGET" \
    $([ "$DRY" = 1 ] && echo --dry)) || {
    record probe "failed" $((SECONDS - T0)) "blendedit does not import"
    return 1
  }
  echo "$probe"
  record setup ok $((SECONDS - T0)) "wheels from $WHEELS into $SITE; env.json"
  local presets flags
  presets=" $(sed -n 's/^presets: //p' <<<"$probe") "
  flags=" $(sed -n 's/^bench-flags: //p' <<<"$probe") "

  # 2. GPU tests: only the files with a gpu mark; on a CPU they are collected and skipped.
  local files
  mapfile -t files < <(grep -rlE 'pytest\.mark\.gpu|mark\(.gpu' tests --include='*.py' | sort)
  if ! wanted gpu-tests; then
    record gpu-tests skipped 0 "not in DEVICE_CHECK_ONLY"
  elif [ "${#files[@]}" -eq 0 ]; then
    echo "== gpu-tests: SKIPPED, no test file has a gpu mark"
    record gpu-tests skipped 0 "no gpu-marked tests"
  else
    step gpu-tests 90 "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider \
      --junitxml="$OUT/pytest.xml" "${files[@]}"
  fi

  # 3. Bench rows.
  local name preset dry limit args a words run_args
  while IFS='|' read -r name preset dry limit args; do
    wanted "$name" || {
      record "$name" skipped 0 "not in DEVICE_CHECK_ONLY"
      continue
    }
    if [[ $presets != *" $preset "* ]]; then
      echo "== $name: SKIPPED, the bench defines no preset '$preset' (it has:$presets)"
      record "$name" skipped 0 "no preset $preset in the bench"
      continue
    fi
    read -r -a words <<<"$args"
    run_args=()
    for a in "${words[@]}"; do
      if [[ $a == \?--* ]]; then  # ?--flag: passed when this bench has it
        a=${a#\?}
        if [[ $flags == *" $a "* ]]; then run_args+=("$a"); else echo "   ($name: no $a here)"; fi
      elif [[ $a == --* && $flags != *" $a "* ]]; then  # say so rather than fail in argparse
        echo "== $name: SKIPPED, blendedit bench has no $a"
        record "$name" skipped 0 "bench has no $a"
        continue 2
      else
        run_args+=("$a")
      fi
    done
    if [ "$DRY" = 1 ]; then
      if [[ $dry == - || $presets != *" $dry "* ]]; then
        echo "== $name: SKIPPED in a dry run (CPU counterpart: $dry)"
        record "$name" skipped 0 "dry run"
        continue
      fi
      step "$name" "$limit" "$PY" -m blendedit.cli bench --preset "$dry" "${run_args[@]}" \
        --device cpu --dtype fp32 --batch 2 --steps 4 --report "$OUT/bench.md"
    else
      step "$name" "$limit" "$PY" -m blendedit.cli bench --preset "$preset" "${run_args[@]}" \
        --device cuda --report "$OUT/bench.md"
    fi
  done <<<"$PLAN"

  # 4. The markdown section for docs/benchmarks.md.
  "$PY" "$HERE/append-results.py" --section-only "$OUT" >"$OUT/section.md" || true
  echo "== done in $((SECONDS - T0))s; files in $OUT:"
  ls -l "$OUT"
  echo "== steps"
  cat "$OUT/steps.tsv"
  echo "== section.md"
  cat "$OUT/section.md"
  ! grep -qE $'\t(failed|timeout)' "$OUT/steps.tsv"  # exit 1 when a step failed
}

main 2>&1 | tee "$OUT/run.log"
