#!/usr/bin/env bash
# The ignored inputs that scripts/device_check.sh carries to the GPU machine (`carry: [".whl", ".authors"]`),
# made on this machine; a fresh checkout has neither. Never committed (.gitignore).
#   .whl/              wheels the GPU machine lacks (it has no network): fla-core and flash-linear-attention
#                      0.6.0 (the fused glue and the fla peers), einops (the authors' code imports it), and
#                      pytest-xdist with execnet (TEST_ARGS="-n 8" spreads the GPU tests over processes)
#   .authors/qdelta/   the authors' qdelta/ folder (their kernel and model, for the benchmarks), taken from a
#                      local git copy of github.com/psmiz/Q-Delta whose git directory is the first argument
# Usage, from anywhere: bash scripts/device_inputs.sh [AUTHORS_GIT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary :all: -d .whl \
  fla-core==0.6.0 flash-linear-attention==0.6.0 einops==0.8.1 pytest-xdist==3.8.0 execnet==2.1.2
if [ $# -ge 1 ]; then
  rm -rf .authors && mkdir -p .authors
  git --git-dir="$1" archive HEAD qdelta | tar -x -C .authors
  echo "the authors' code at $(git --git-dir="$1" rev-parse --short HEAD): .authors/qdelta"
fi
ls .whl
