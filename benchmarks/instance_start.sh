#!/bin/sh
# One restart of the model_sync scenario's instance, to serving (/health), in a process mode:
#   two    the scenarios' setting: the worker inside the engine process (the uni executor; two
#          processes, the API server's and the engine's), OpenMP threads unbound
#   three  the CPU build's own: API server, engine and worker processes, the worker bound to a core
# Paired, on a converged scenario (docs: README, Benchmarks):
#   molecule create -s model_sync && molecule prepare -s model_sync && molecule converge -s model_sync
#   farm-bench -n 5 --timeout 560 --vs "benchmarks/instance_start.sh three" -- benchmarks/instance_start.sh two
#   molecule destroy -s model_sync
set -eu
case ${1:-} in two | three) ;; *) echo "usage: $0 two|three" >&2; exit 2 ;; esac
docker exec -i vllm-model-sync-1 sh -s "$1" <<'ON_HOST'
set -eu
unit=/etc/systemd/system/vllm-tiny.service
dropin=/etc/systemd/system/vllm-tiny.service.d/benchmark.conf
if [ "$1" = three ]; then
    mkdir -p "${dropin%/*}"
    start=$(sed -n 's/^ExecStart=//p' "$unit" | sed 's/ --distributed-executor-backend uni//')
    printf '[Service]\nEnvironment=VLLM_CPU_OMP_THREADS_BIND=auto VLLM_ENABLE_V1_MULTIPROCESSING=1\nExecStart=\nExecStart=%s\n' \
        "$start" >"$dropin"
else
    rm -f "$dropin"
fi
systemctl daemon-reload
systemctl stop vllm-tiny
systemctl start vllm-tiny
until curl -fsS -o /dev/null http://127.0.0.1:8000/health 2>/dev/null; do sleep 0.2; done
ON_HOST
