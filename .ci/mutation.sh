#!/usr/bin/env bash
# Mutation testing of the safety core: mutmut 3 mutates controller/rules/core.py and runs
# tests/core against every mutant. Prints the summary and every surviving mutant.
#
# It works in a scratch copy, so the checkout gets no mutants/ directory and no mutmut
# configuration (mutmut 3 reads [mutmut] from setup.cfg when pyproject.toml has no
# [tool.mutmut]; the scratch copy carries that setup.cfg).
#
# Environment:
#   MUTATION_JOBS     parallel workers (default: number of CPUs)
#   MUTATION_WORKDIR  scratch directory to use and keep (default: a fresh temp dir)
#   MUTATION_TARGET   module to mutate (default: controller/rules/core.py)
#
# Arguments are passed to "mutmut run": mutant names or globs such as
# 'controller.rules.core.x__check_following*' restrict the run to those mutants.
#
# Exit status: 0 when no mutant survives, 1 otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv/bin"
jobs="${MUTATION_JOBS:-$(nproc)}"
target="${MUTATION_TARGET:-controller/rules/core.py}"
work="${MUTATION_WORKDIR:-$(mktemp -d -t mutation-XXXXXX)}"

mkdir -p "${work}/tests"
rm -rf "${work}/controller" "${work}/tests/core"
cp -r "${root}/controller" "${work}/controller"
cp -r "${root}/tests/core" "${work}/tests/core"
cp "${root}/tests/__init__.py" "${work}/tests/__init__.py"
# The core tests also check the docs generated from the core (the mode diagram in safety.md).
rm -rf "${work}/docs"
cp -r "${root}/docs" "${work}/docs"
cp "${root}/pyproject.toml" "${work}/pyproject.toml"
find "${work}" -name __pycache__ -type d -prune -exec rm -rf {} +

# Mutants that mypy --strict rejects are counted as caught by the type checker: CI runs
# mypy strict on every file, so such a change could never be merged.
cat > "${work}/setup.cfg" <<CFG
[mutmut]
source_paths = controller
only_mutate = ${target}
pytest_add_cli_args_test_selection = tests/core
also_copy =
    docs
type_check_command =
    mypy
    ${target}
    --output
    json
    --no-warn-unused-ignores
CFG

cd "${work}"
export PATH="${venv}:${PATH}"  # mutmut recognises the type checker by the bare name "mypy"
export HYPOTHESIS_PROFILE=mutation
echo "mutation testing ${target} in ${work} with ${jobs} workers"
"${venv}/mutmut" run --max-children "${jobs}" "$@"
"${venv}/mutmut" export-cicd-stats >/dev/null
python3 - <<'PY'
import json
stats = json.load(open("mutants/mutmut-cicd-stats.json"))
print("summary:", ", ".join(f"{key} {value}" for key, value in stats.items()))
PY
echo "surviving mutants (show one with: cd ${work} && ${venv}/mutmut show NAME):"
survivors="$("${venv}/mutmut" results)"
echo "${survivors}"
if grep -q ': survived' <<<"${survivors}"; then
    exit 1
fi
