#!/usr/bin/env bash
# The accelerator check, in one script, for a GPU lent for a few minutes:
#
#   bench/device_check.sh [--out DIR]        # on the GPU machine (DIR default: $OUT, else ./device_check_out)
#   bench/device_check.sh --cpu [--out DIR]  # the same steps on CPU: no install, tiny model, few steps
#
# Steps, each under its own time limit and all within T5X_EXT_DEVICE_CHECK_BUDGET seconds
# (default 470, under 8 minutes), each logged to DIR/device_check.log:
#   install  wheels carried in T5X_EXT_WHEELS (default ./.whl; the device has no registry),
#            then jax with CUDA: a jax that already sees a GPU is kept (its version is
#            recorded), else `pip install "jax[cuda12]==0.10.2"`; T5X_EXT_JAX_INSTALL=force
#            installs it anyway, =never never does. Missing pure-Python needs (gin-config) are
#            installed from the registry where there is one.
#   env      versions and devices (jax.print_environment_info, nvidia-smi)
#   check    bench/accelerator.py --check: a tiny model's logits on the GPU against the CPU's
#            (bf16 tolerance), and cuDNN attention's outputs and q/k/v/bias gradients
#            against XLA's -> DIR/check.json
#   small    T5.1.1 small at 512/128, bf16, Adafactor, the batch the memory plan says fits,
#            attention 'auto' -> DIR/small.json
#   large    T5.1.1 large, attention 'auto' then 'xla' (measured, not assumed) -> DIR/large.json
# and writes DIR/device_check.json (every step's status and seconds, the check's verdict and
# the rows' main figures). Exit status 0 when every step passed.
#
# CPU mode (--cpu or T5X_EXT_DEVICE_CHECK=cpu) runs the same steps with JAX_PLATFORMS=cpu,
# the tiny model, short lengths and explicit batches; T5X_EXT_DEVICE_CHECK_BENCH_ARGS adds
# flags to both bench steps (the tests shrink the model further with gin bindings).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${T5X_EXT_DEVICE_CHECK:-gpu}"
OUT_DIR="${OUT:-$PWD/device_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --cpu) MODE=cpu; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$MODE" in gpu|cpu) ;; *) echo "T5X_EXT_DEVICE_CHECK=$MODE: expected gpu or cpu" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
JAX_VERSION=0.10.2
BUDGET="${T5X_EXT_DEVICE_CHECK_BUDGET:-470}"
BENCH_ARGS="${T5X_EXT_DEVICE_CHECK_BENCH_ARGS:-}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/device_check.log"
STEPS="$OUT_DIR/.steps.tsv"
: > "$LOG"
: > "$STEPS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if [ "$MODE" = cpu ]; then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
else
  # More of the GPU for the batch than JAX's default 75% preallocation.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
fi
SECONDS=0

say() { echo "[device_check $(date -u +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG" >&2; }

# step NAME LIMIT CMD...: runs CMD under min(LIMIT, what the budget has left) seconds.
step() {
  local name=$1 limit=$2 left rc t0=$SECONDS
  shift 2
  left=$((BUDGET - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    say "$name: skipped (time budget of ${BUDGET}s spent)"
    printf '%s\t%s\t%s\n' "$name" skipped 0 >> "$STEPS"
    return 1
  fi
  say "$name: start (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && say "$name: timed out after ${limit}s"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STEPS"
  say "$name: exit $rc after $((SECONDS - t0))s"
  return "$rc"
}

has_gpu_jax() {
  "$PY" - <<'EOF' >> "$LOG" 2>&1
import jax
assert jax.default_backend() in ("gpu", "cuda"), jax.default_backend()
print("jax", jax.__version__, "sees", jax.devices())
EOF
}

install() {
  local wheels="${T5X_EXT_WHEELS:-$ROOT/.whl}" t0=$SECONDS rc=0
  if ls "$wheels"/*.whl > /dev/null 2>&1; then
    say "install: wheels from $wheels"
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/t5x_ext_site "$wheels"/*.whl >> "$LOG" 2>&1 || rc=1
    export PYTHONPATH="/tmp/t5x_ext_site:$PYTHONPATH"
  fi
  local how="${T5X_EXT_JAX_INSTALL:-auto}"
  if [ "$how" = force ] || { [ "$how" = auto ] && ! has_gpu_jax; }; then
    say "install: pip install jax[cuda12]==$JAX_VERSION"
    timeout 240 "$PY" -m pip install -q "jax[cuda12]==$JAX_VERSION" >> "$LOG" 2>&1 || rc=1
  fi
  for need in gin:gin-config==0.5.0 flax:flax==0.12.8 optax:optax==0.2.8; do
    if ! "$PY" -c "import ${need%%:*}" 2> /dev/null; then
      say "install: ${need#*:} (missing)"
      timeout 60 "$PY" -m pip install -q "${need#*:}" >> "$LOG" 2>&1 || rc=1
    fi
  done
  has_gpu_jax || rc=1
  printf '%s\t%s\t%s\n' install "$rc" "$((SECONDS - t0))" >> "$STEPS"
  say "install: exit $rc"
  return "$rc"
}

say "mode $MODE, budget ${BUDGET}s, results in $OUT_DIR"
if [ "$MODE" = gpu ]; then
  install || say "install: a GPU jax is still missing; the steps below will say what fails"
  SMALL=(--models=small --attention=auto --batch=0 --search_start=32 --steps=5 --warmup=2)
  LARGE=(--models=large --attention=auto,xla --batch=0 --search_start=8 --steps=4 --warmup=1)
  LIMITS=(60 90 140 260)
else
  SMALL=(--models=tiny --attention=auto --inputs=64 --targets=16 --batch=2 --steps=2 --warmup=1)
  LARGE=(--models=tiny --attention=auto,xla --inputs=64 --targets=16 --batch=2 --steps=2 --warmup=1)
  LIMITS=(120 240 300 300)
fi

step env "${LIMITS[0]}" bash -c "'$PY' -c 'import jax; jax.print_environment_info(); print(jax.devices())'; nvidia-smi || true"
step check "${LIMITS[1]}" "$PY" "$ROOT/bench/accelerator.py" --check --out "$OUT_DIR/check.json"
# Each bench gets a budget a little under its step's limit, so its rows stop (and keep what
# they measured) before the step is killed.
bench() {
  local name=$1 limit=$2 left
  shift 2
  left=$((BUDGET - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  step "$name" "$limit" "$PY" "$ROOT/bench/accelerator.py" "$@" $BENCH_ARGS \
    --time_budget=$((limit > 25 ? limit - 15 : limit)) --out "$OUT_DIR/$name.json"
}
bench small "${LIMITS[2]}" "${SMALL[@]}"
bench large "${LIMITS[3]}" "${LARGE[@]}"

"$PY" - "$OUT_DIR" "$MODE" "$SECONDS" <<'EOF' 2>> "$LOG"
import json, pathlib, sys

out, mode, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
steps = []
for line in (out / ".steps.tsv").read_text().splitlines():
  name, rc, s = line.split("\t")
  steps.append({"name": name, "exit": rc, "seconds": int(s)})
summary = {"mode": mode, "total_s": seconds, "steps": steps}
keep = (
  "model", "attention", "batch_per_device", "sequences_per_s_per_device", "tokens_per_s",
  "mfu", "step_s", "breakdown", "attention_taken", "vs_rosetta_a100", "error",
)
for name in ("check", "small", "large"):
  path = out / f"{name}.json"
  if not path.exists():
    summary[name] = None
    continue
  data = json.loads(path.read_text())
  summary.setdefault("machine", data.get("machine"))
  if name == "check":
    summary["check"] = data.get("check")
  else:
    summary[name] = [{k: r[k] for k in keep if k in r} for r in data.get("rows", [])]
bench_ok = all(
  summary.get(n) and all("error" not in r for r in summary[n]) for n in ("small", "large")
)
check_ok = bool((summary.get("check") or {}).get("ok"))
summary["ok"] = all(s["exit"] == "0" for s in steps) and check_ok and bench_ok
(out / "device_check.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
for name in ("small", "large"):
  for r in summary.get(name) or []:
    mfu = r.get("mfu")
    print(
      f"{r['model']:>6} {r['attention']:>11}  batch/dev {r.get('batch_per_device')}  "
      f"{r.get('sequences_per_s_per_device', float('nan')):.1f} seq/s/dev  "
      f"MFU {'n/a' if mfu is None else f'{mfu:.1%}'}  {r.get('error', '')}"
    )
print("device_check:", "ok" if summary["ok"] else "NOT ok", f"({seconds}s)")
sys.exit(0 if summary["ok"] else 1)
EOF
rc=$?
rm -f "$STEPS"
exit "$rc"
