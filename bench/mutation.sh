#!/usr/bin/env bash
# Mutation testing (mutmut, configured in pyproject.toml [tool.mutmut]) of the statistics,
# evaluation, split and training modules, in a scratch copy of the working tree; then the
# score per module (bench/mutation_report.py). Takes more than an hour on 2 cores.
#   usage: bench/mutation.sh [--set trust] [--only MODULE,...] [--list]
#     --list: print every surviving mutant's diff
#     --set trust: the modules and tests of [tool.deepcovid.mutation.trust] in pyproject.toml instead
#                  (the image and DICOM readers, inference, predict, audit, regions, reproduction)
#     --only deepcovid/data/split.py,...: only these of the set's modules (the ones a change touched)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work"
cd "$work"
if [ "${1:-}" = "--set" ]; then
  "$repo/.venv/bin/python" - "$2" <<'PY'
import json, re, sys, tomllib
text = open("pyproject.toml").read()
chosen = tomllib.loads(text)["tool"]["deepcovid"]["mutation"][sys.argv[1]]
block = "\n".join(["[tool.mutmut]", 'source_paths = ["deepcovid"]',
                   f"only_mutate = {json.dumps(chosen['only_mutate'])}",
                   f"pytest_add_cli_args_test_selection = {json.dumps(chosen['tests'])}",
                   f"pytest_add_cli_args = {json.dumps(chosen['pytest_args'])}",
                   "also_copy = " + json.dumps(chosen["also_copy"]), "", ""])
open("pyproject.toml", "w").write(re.sub(r"^\[tool\.mutmut\]\n.*?(?=^\[)", lambda m: block, text, count=1,
                                         flags=re.S | re.M))
PY
  shift 2
fi
if [ "${1:-}" = "--only" ]; then
  "$repo/.venv/bin/python" - "$2" <<'PY'
import json, re, sys, tomllib
text = open("pyproject.toml").read()
listed = tomllib.loads(text)["tool"]["mutmut"]["only_mutate"]
chosen = [m for m in sys.argv[1].split(",") if m]
if unknown := [m for m in chosen if m not in listed]:
    sys.exit(f"--only: not among the set's modules: {', '.join(unknown)}")
open("pyproject.toml", "w").write(re.sub(r"^only_mutate = \[.*?\]\n", lambda m: f"only_mutate = {json.dumps(chosen)}\n",
                                         text, count=1, flags=re.S | re.M))
PY
  shift 2
fi
# One OpenMP thread: forked mutant processes of torch code (model/training.py train_head) stalled
# until the timeout with torch's threads running in the parent.
export DEEPCOVID_SHARED_DATA="${DEEPCOVID_SHARED_DATA:-$repo/../shared/data}"  # the real-data tests too
OMP_NUM_THREADS=1 "$repo/.venv/bin/python" -m mutmut run --max-children "$(nproc)" > mutmut.log 2>&1 || { tail -c 3000 mutmut.log; exit 1; }
"$repo/.venv/bin/python" "$repo/bench/mutation_report.py" "$@"
