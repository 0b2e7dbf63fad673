#!/usr/bin/env bash
# Everything a GPU session measures, in one command for the device tool (run from the repo root):
#
#   bash benchmarks/device_wheels.sh                       # here, once: the wheels the device lacks
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# 1. benchmarks/extract.py --gpu-quick: ViT-B-32 end to end and model-only, the five-model pass, the
#    CLIP_benchmark loop and the CPU-vs-GPU decode agreement (which would expose a stream race in the
#    decoding thread: the same-image cosine would collapse) -> $OUT/extract_<gpu>.json (160 s on an
#    H200 box; capped at 250 s).
# 2. benchmarks/decode_share.py: ViT-B-32 end to end on 32,768 images (8,192 rendered, each linked 4
#    times) for four reader settings, and the GPU JPEG decoder alone -> $OUT/decode_share_<gpu>.json
#    (about 80 s; capped at 150 s).
# 3. benchmarks/retrieval_index.py --flat-only on 1M x 512: exact search as a torch top-k on the GPU
#    (faiss-gpu cannot be carried; capped at 75 s) -> $OUT/retrieval_index_<gpu>.json. The caps keep the
#    whole call under 8 min of the 10 a command may run.
# Copy the JSON files into benchmarks/results/ and commit them with the hardware they name.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'; \
import re; print(re.sub('[^a-z0-9]+', '-', n.lower()).strip('-'))")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
status=0
timeout 250 python3 benchmarks/extract.py --gpu-quick --output "$OUT/extract_$gpu.json" 2>&1 | tee "$OUT/extract.log" \
    || status=1
timeout 150 python3 benchmarks/decode_share.py --device cuda --n 8192 --copies 4 \
    --configs auto:0:256,4:0:256,10:0:256,8:0.1:256 --output "$OUT/decode_share_$gpu.json" 2>&1 \
    | tee "$OUT/decode_share.log" || status=1
timeout 75 python3 benchmarks/retrieval_index.py --n 1000000 --queries 10000 --flat-only \
    --output "$OUT/retrieval_index_$gpu.json" 2>&1 | tee "$OUT/retrieval.log" || status=1
exit $status
