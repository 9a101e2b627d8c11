#!/usr/bin/env bash
# A GPU session in one command: build the CUDA extension for the GPU at hand, then check it
# and time it, each step under its own time limit so one slow step leaves the others' logs.
#   [GPU_RUN_SKIP="triton memcheck"] [LIMIT_build=300] [GPU_CHECK_ARGS="--ops deconv_block"] \
#     bash bench/gpu_run.sh [log folder]
# Steps: build (setup.py build_ext --inplace, this GPU's architecture only), the build's
# spill check, correctness of the native backend (pytest on CUDA + bench/gpu_check.py),
# correctness of the Triton backend, speed against eager and torch.compile, and the
# smallest native cases under compute-sanitizer's memcheck. Logs: one NAME.txt per step.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu_logs}")
mkdir -p "$out"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.txt
  local name=$1 limit_var=LIMIT_$1; local limit=${!limit_var:-$2}; shift 2
  case " ${GPU_RUN_SKIP:-} " in *" $name "*) echo "=== $name: skipped"; return;; esac
  local start=$SECONDS
  echo "=== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - start)) s"
  tail -n 25 "$out/$name.txt"
}
{ nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,memory.total --format=csv
  lscpu | grep -E 'Model name|^CPU\(s\)'
  python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, torch.version.cuda, triton.__version__)"
  nvcc --version | tail -n 2; } 2>&1 | tee "$out/env.txt"
arch=$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
nv=$(python3 -c "import os, nvidia; print(os.path.join(nvidia.__path__[0], 'cu13', 'include'))" 2>/dev/null)
[ -d "$nv" ] && export CPATH=$nv${CPATH:+:$CPATH}
export TORCH_CUDA_ARCH_LIST=$arch FORCE_CUDA=1 MAX_JOBS=$(nproc) CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
step build "${BUILD_LIMIT:-330}" python3 setup.py build_ext --inplace
# fastvae.kernels is ./kernels (setup.py's package_dir): without an install, a link serves
if ! [ -e fastvae/kernels ]; then ln -s ../kernels fastvae/kernels; trap 'rm -f fastvae/kernels' EXIT; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step cuda_build 60 python3 tools/check_cuda_build.py
# GPU_CHECK_ARGS go last on every gpu_check.py line, so they override (--compile-budget 0)
check=(python3 bench/gpu_check.py) extra=(${GPU_CHECK_ARGS:-})
step native 180 "${check[@]}" --backends native,auto --skip-bench --error-paths "${extra[@]}"
step triton 150 "${check[@]}" --backends triton --skip-pytest --skip-bench "${extra[@]}"
step speed 150 "${check[@]}" --backends "" --skip-pytest --compile-budget 60 --profile "${extra[@]}"
# A crash (not an exception) in a native op's error path: where, by a C++ backtrace
cat > /tmp/fastvae_raise.py <<'PY'
import torch, fastvae
try:
    torch.ops.fastvae._reparam_kl_fwd(torch.randn(2, 3, device="cuda"),
                                      torch.randn(2, 4, device="cuda"), None, torch.tensor(0))
except RuntimeError as e:
    print("raised:", str(e).splitlines()[0])
PY
step backtrace 60 cuda-gdb -q -batch -ex "set pagination off" -ex run -ex bt \
  --args python3 /tmp/fastvae_raise.py
step memcheck 120 compute-sanitizer --tool memcheck --print-limit 20 "${check[@]}" --sanitize "${extra[@]}"
