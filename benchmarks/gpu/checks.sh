#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run: the CUDA tests, the training, embedding and
# localization benchmarks on the GPU, and exact resume / compile / DDP with NCCL under torchrun.
# No test depends on this; a session or a user with a GPU runs it and quotes its figures.
#
#   bash benchmarks/gpu/checks.sh OUT_DIR
#
# Runs with the python3 on the PATH (its torch must see the GPU) and the package from src/. Each
# check writes OUT_DIR/<check>.log; a failed check does not stop the others; the last line
# says which failed. ONLY="name ..." runs only those checks.
set -u
out=${1:?usage: checks.sh OUT_DIR}
mkdir -p "$out"
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
cores=$(nproc)
failed=()
tmp=$(mktemp -d)

check() {  # check NAME SECONDS COMMAND...: run with a time limit, log, show the tail
    local name=$1 limit=$2 start rc
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    start=$(date +%s)
    echo "== $name"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(($(date +%s) - start)) s"
    tail -n "${TAIL:-4}" "$out/$name.log" | cut -c1-600
    [ "$rc" -eq 0 ] || failed+=("$name")
}

nvidia-smi -L
$py -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

check cuda_tests 120 $py -m pytest -q -p no:cacheprovider tests/test_checkpoint.py tests/test_losses.py \
    tests/test_models.py -k cuda
TAIL=8 check train_throughput 240 $py benchmarks/train_throughput.py --device cuda --speed \
    --cuda-workers $((cores - 2)) --cuda-steps 30
TAIL=4 check embed_throughput 100 $py benchmarks/embed_throughput.py --device cuda --frames 96 \
    --workers 8 --batch-size 32
TAIL=12 check localize_latency 90 $py benchmarks/localize_latency.py --device cuda --cold-starts 0 \
    --repeats 100
check synth_small 120 $py -m liploc synth --out "$tmp/data" --drives 2 --frames 96 --size small
TAIL=6 check ddp_resume 200 $py -m torch.distributed.run --nproc_per_node=1 benchmarks/gpu/resume_check.py \
    "$tmp/data" "$tmp/runs"
rm -rf "$tmp"
echo "failed: ${failed[*]:-none}"
