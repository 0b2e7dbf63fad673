#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the Python 3.12 wheels that benchmarks/gpu_session.sh needs on the
# lent H200 machine, which has torch, torchvision, timm, numpy, pyarrow, h5py, scipy, scikit-learn,
# matplotlib and pillow but not these (the device tool's README says how to carry wheels). faiss-gpu is
# not among them: its wheel is over the 64 MiB a call may carry, so GPU search there is torch's.
# Versions are this project's tested ones. Run here, where a package registry is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 \
    duckdb==2.0.1 \
    clip-benchmark==1.6.2 webdataset==1.0.2 braceexpand==0.1.7
du -sh .whl
ls .whl
