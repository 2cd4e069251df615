#!/usr/bin/env bash
# The speed issue's GPU figures on a lent GPU machine (issue 23), in one command or two:
#   eager     python -m studies.perf, size full: training and evaluation img/s, RNP and ANP seconds, the other
#             defenses, the calibrated reference per phase and its ratio, the paper grid's projection, the targets
#             (about 4 minutes on an H200, judged from the figures of its first run);
#   compiled  the same with --compile reduce-overhead (torch.compile + CUDA graphs), leaving out the reference and
#             the other defenses: what compiling buys training, evaluation, RNP and ANP on the same machine.
# Usage, on the device machine from the project root, after the wheels are in place (../shared/tools/device/prepare.sh):
#   . .device/env.sh && bash studies/gpu_speed.sh [eager|compiled|both]     (default both)
# Where one command may run 10 minutes, run `eager` and `compiled` as two commands. Each perf run is stopped (SIGINT)
# at its time limit (EAGER_S, COMPILED_S seconds) and still leaves the phases it finished in its JSON
# ("complete": false). Files land in $OUT (the device tool's folder) or outputs/gpu_speed: gpu.txt,
# perf_eager.{json,log}, perf_compiled.{json,log}. A CPU dry run of the same script, in a minute or two:
#   DEVICE=cpu SIZE=tiny bash studies/gpu_speed.sh
set -uo pipefail
part=${1:-both}
case $part in eager | compiled | both) ;; *) echo "usage: $0 [eager|compiled|both]" >&2; exit 2 ;; esac
out=${OUT:-outputs/gpu_speed}
device=${DEVICE:-cuda}
size=${SIZE:-full}
mkdir -p "$out"
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} >> "$out/gpu.txt"
status=0
for run in eager compiled; do
  [ "$part" = both ] || [ "$part" = "$run" ] || continue
  if [ "$run" = eager ]; then
    extra=(); limit=${EAGER_S:-420}
  else
    extra=(--compile reduce-overhead --skip defenses,reference); limit=${COMPILED_S:-420}
  fi
  start=$(date +%s)
  timeout -s INT -k 20 "$limit" python3 -m studies.perf --device "$device" --size "$size" \
    --out "$out/perf_$run.json" "${extra[@]}" > /dev/null 2> "$out/perf_$run.log"
  code=$?
  [ $code -eq 0 ] || status=1
  echo "perf $run: exit $code, $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$out/gpu.txt"
  tail -n 40 "$out/perf_$run.log"
done
exit $status
