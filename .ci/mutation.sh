#!/usr/bin/env bash
# Mutation testing of the safety core: mutmut 3 mutates every module of the core (listed in
# .ci/safety-core.txt: decide() in controller/rules/core.py and the rule modules it composes)
# and runs tests/core against every mutant. Prints the summary and every surviving mutant.
#
# It works in a scratch copy, so the checkout gets no mutants/ directory and no mutmut
# configuration (mutmut 3 reads [mutmut] from setup.cfg when pyproject.toml has no
# [tool.mutmut]; the scratch copy carries that setup.cfg).
#
# Environment:
#   MUTATION_JOBS     parallel workers (default: number of CPUs)
#   MUTATION_WORKDIR  scratch directory to use and keep (default: a fresh temp dir)
#   MUTATION_TARGET   files to mutate, separated by spaces: paths or globs relative to the
#                     repository (default: every path in .ci/safety-core.txt)
#
# Arguments are passed to "mutmut run": mutant names or globs such as
# 'controller.rules.plausibility.x_check_following*' restrict the run to those mutants.
#
# Exit status: 0 when no mutant survives, 1 otherwise.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${root}/.venv/bin"
jobs="${MUTATION_JOBS:-$(nproc)}"
core_list="${root}/.ci/safety-core.txt"
default_target="$(grep -v -e '^#' -e '^[[:space:]]*$' "${core_list}" | tr '\n' ' ')"
read -r -a targets <<<"${MUTATION_TARGET:-${default_target}}"
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

# only_mutate takes the paths or globs as they are (mutmut matches them with fnmatch); the
# type checker gets the files they name. A multi-line setup.cfg value is one list item a line.
files=()
for pattern in "${targets[@]}"; do
    matched="$(cd "${work}" && compgen -G "${pattern}" || true)"
    [ -n "${matched}" ] || { echo "mutation.sh: ${pattern} matches no file" >&2; exit 2; }
    mapfile -t -O "${#files[@]}" files <<<"${matched}"
done
indent() { printf '    %s\n' "$@"; }

# Mutants that mypy --strict rejects are counted as caught by the type checker: CI runs
# mypy strict on every file, so such a change could never be merged.
cat > "${work}/setup.cfg" <<CFG
[mutmut]
source_paths = controller
only_mutate =
$(indent "${targets[@]}")
pytest_add_cli_args_test_selection = tests/core
also_copy =
    docs
type_check_command =
    mypy
$(indent "${files[@]}")
    --output
    json
    --no-warn-unused-ignores
CFG

cd "${work}"
export PATH="${venv}:${PATH}"  # mutmut recognises the type checker by the bare name "mypy"
export HYPOTHESIS_PROFILE=mutation
echo "mutation testing ${targets[*]} in ${work} with ${jobs} workers"
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
