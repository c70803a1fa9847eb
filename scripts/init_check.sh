#!/usr/bin/env bash
# Which initialisation the headline command should get (issue 16): the headline model
# (--sparsity 0.0005 --hidden 1500, small preset, SGD lr 1) trained 300 steps with each init,
# then scored on the validation split. Run folders go to ${OUT:-runs/init-300}/<init>-fb<bias>/;
# docs/runs/init-300/ keeps their metrics.jsonl, config.json and the evaluate output.
#     SPARSELM_DATA=path/to/ptb bash scripts/init_check.sh   (about 10 minutes per run, 1 thread)
set -euo pipefail
out=${OUT:-runs/init-300}
data=${SPARSELM_DATA:?set SPARSELM_DATA to the folder of ptb.{train,valid,test}.txt}
for spec in "uniform 0" "fanin 0" "fanin 1"; do
  read -r init bias <<<"$spec"
  run="$out/$init-fb$bias"
  rm -rf "$run"
  sparselm train --sparsity 0.0005 --hidden 1500 --max-steps 300 --log-every 50 \
      --init "$init" --forget-bias "$bias" --threads 1 --out "$run" --data "$data"
  sparselm evaluate "$run/last.h5" --split valid --json > "$run/evaluate_valid.json"
done
