#!/usr/bin/env bash
# Orchestrate GPU jobs on a lent machine (run from the repo root there):
#   bash scripts/gpu/run_all.sh JOB[@WAIT_FOR_FILE] ...
# Each JOB is scripts/gpu/JOB.sh, started in parallel with RUNOUT=/tmp/runout/JOB; a job
# written JOB@PATH starts only once PATH exists (e.g. the classifier a fine-tune needs).
# Data comes from .carry/ (cifar10-jpeg.tar.gz, imagenette-pack.tar.gz), unpacked to /tmp/data.
# At the end each job's output folder is tarred to $OUT/JOB.tar (what comes back).
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 PURIFYBENCH_CACHE=/tmp/pb-cache
mkdir -p /tmp/data /tmp/runout
tar xzf .carry/cifar10-jpeg.tar.gz -C /tmp/data
cp .carry/cifar10-jpeg.tar.gz /tmp/data/
[ -f .carry/imagenette-pack.tar.gz ] && tar xzf .carry/imagenette-pack.tar.gz -C /tmp/data
export DATA=/tmp/data
export CLASSIFIER_RUN=/tmp/runout/zoo_cifar/cifar10_standard
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
start=$(date +%s)
pids=()
for spec in "$@"; do
  job=${spec%%@*}; wait_for=""; [ "$spec" != "$job" ] && wait_for=${spec#*@}
  (
    if [ -n "$wait_for" ]; then
      while [ ! -e "$wait_for" ]; do
        sleep 5
        if [ $(( $(date +%s) - start )) -gt "${MAX_WAIT:-300}" ]; then echo "[$job] gave up waiting for $wait_for"; exit 3; fi
      done
      echo "[$job] waited $(( $(date +%s) - start )) s for $wait_for"
    fi
    mkdir -p /tmp/runout/$job
    RUNOUT=/tmp/runout/$job bash scripts/gpu/$job.sh > /tmp/runout/$job/job.log 2>&1
    echo "[$job] exit $? after $(( $(date +%s) - start )) s" | tee -a /tmp/runout/$job/job.log
  ) &
  pids+=($!)
done
# Never let the call run past its limit: whatever is done by DEADLINE seconds comes back.
while [ $(( $(date +%s) - start )) -lt "${DEADLINE:-560}" ]; do
  alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && break
  sleep 3
done
for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && echo "job pid $p still running at the deadline"; done
for spec in "$@"; do job=${spec%%@*}; tar cf "$OUT/$job.tar" -C /tmp/runout "$job"; done
ls -la "$OUT"
