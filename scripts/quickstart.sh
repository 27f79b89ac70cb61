#!/usr/bin/env bash
# The first command: set up, build, and run the whole pipeline on the embedded synthetic world
# (configs/quickstart/: no downloads; a few minutes on 2 CPU cores after the build).
#   scripts/quickstart.sh                 # setup + build + medllm pipeline --config configs/quickstart/pipeline.yaml
#   scripts/quickstart.sh --from cpt      # extra flags go to `medllm pipeline`
# A rerun skips the stages that are done. The report: runs/quickstart/report/report.{md,html,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MEDLLM_BUILD_DIR:-build}
scripts/setup.sh
start=$(date +%s)
"$build"/medllm pipeline --config configs/quickstart/pipeline.yaml "$@"
echo "quickstart: pipeline finished in $(( $(date +%s) - start )) s; open runs/quickstart/report/report.html"
