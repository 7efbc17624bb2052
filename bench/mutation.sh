#!/usr/bin/env bash
# Mutation testing (mutmut, configured in pyproject.toml [tool.mutmut]) of the statistics,
# evaluation, split and training modules, in a scratch copy of the working tree; then the
# score per module (bench/mutation_report.py). Takes more than an hour on 2 cores.
#   usage: bench/mutation.sh [--list]      (--list: print every surviving mutant's diff)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work"
cd "$work"
# One OpenMP thread: forked mutant processes of torch code (model/training.py train_head) stalled
# until the timeout with torch's threads running in the parent.
OMP_NUM_THREADS=1 "$repo/.venv/bin/python" -m mutmut run --max-children "$(nproc)" > mutmut.log 2>&1 || { tail -c 3000 mutmut.log; exit 1; }
"$repo/.venv/bin/python" "$repo/bench/mutation_report.py" "$@"
