#!/usr/bin/env bash
# Train the offline preset once with every component on and once with each ablation switch, same seed and
# epochs, then print a table of the test metrics and wall times from each run's all_results.json.
#
#   scripts/run_ablations.sh DATA_DIR OUTPUT_ROOT [extra train.py flags...]
#
# Example: scripts/run_ablations.sh ../shared/data/twitter2015/aom_json runs/ablation-t15 --num-train-epochs 3
set -euo pipefail
data_dir=$1
output_root=$2
shift 2
cd "$(dirname "$0")/.."

declare -A switches=(
    [all-on]=""
    [no-image]="--no-image"
    [no-syntactic-branch]="--no-syntactic-branch"
    [no-semantic-branch]="--no-semantic-branch"
    [no-scope-loss]="--no-scope-loss"
    [learned-queries]="--query-mode learned"
)
order=(all-on no-image no-syntactic-branch no-semantic-branch no-scope-loss learned-queries)

for name in "${order[@]}"; do
    output_dir="$output_root/$name"
    if [ -f "$output_dir/all_results.json" ]; then
        echo "skip $name: $output_dir/all_results.json exists"
        continue
    fi
    # shellcheck disable=SC2086
    accelerate launch --cpu --num_processes 1 train.py --preset offline-minilm --data-dir "$data_dir" \
        --blank-missing-images --task jmasa --output-dir "$output_dir" --overwrite-output-dir \
        ${switches[$name]} "$@"
done

python - "$output_root" "${order[@]}" <<'PY'
import json
import sys
from pathlib import Path

root, names = Path(sys.argv[1]), sys.argv[2:]
print("| run | MASC acc | MASC macro-F1 | MATE F1 | JMASA F1 | dev JMASA F1 | wall (s) |")
print("|---|---|---|---|---|---|---|")
for name in names:
    results = json.loads((root / name / "all_results.json").read_text())
    print(
        f"| {name} | {results['test_masc_accuracy']:.4f} | {results['test_masc_macro_f1']:.4f} "
        f"| {results['test_mate_f1']:.4f} | {results['test_jmasa_f1']:.4f} | {results['dev_jmasa_f1']:.4f} "
        f"| {results['train_runtime_seconds']:.0f} |"
    )
PY
