#!/usr/bin/env bash
# Mutation testing of the safety core: mutmut 3 mutates every module of the core (listed in
# .ci/safety-core.txt: decide() in controller/rules/core.py and the rule modules it composes)
# and runs tests/core against every mutant, in two passes: a quick pass with the property
# tests capped and the slowest exhaustive tests on a stride of their cases (MUTATION_QUICK=1,
# tests/core/conftest.py), then every survivor of it against the full tests/core. Prints the
# counts of both passes and every mutant that survives the full tests.
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
rm -rf "${work}/controller" "${work}/firmware_bridge" "${work}/tests/core"
cp -r "${root}/controller" "${work}/controller"
# The core reads the firmware fault table of the wire protocol (firmware_bridge/wire/faults.py).
cp -r "${root}/firmware_bridge" "${work}/firmware_bridge"
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
    firmware_bridge
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
# Pass 1, quick: property tests capped and the slowest exhaustive tests on a stride of their
# cases (tests/core/conftest.py). Fewer cases can only let a mutant survive, never kill one.
MUTATION_QUICK=1 "${venv}/mutmut" run --max-children "${jobs}" "$@"
"${venv}/mutmut" export-cicd-stats >/dev/null
python3 - <<'PY'
import json
stats = json.load(open("mutants/mutmut-cicd-stats.json"))
print("quick pass:", ", ".join(f"{key} {value}" for key, value in stats.items()))
PY
# Pass 2, full: every survivor of the quick pass against the whole of tests/core, every
# property test at its own example count and every exhaustive test complete. The mutated
# sources in mutants/ pick the mutant named by MUTANT_UNDER_TEST.
"${venv}/mutmut" results | awk -F': ' '/: survived$/ {gsub(/ /, "", $1); print $1}' \
    >quick-survivors.txt
echo "$(wc -l <quick-survivors.txt) survivors of the quick pass; re-running each against the full tests"
# One pytest per survivor, ${jobs} at a time. A mutant that makes the full tests run past
# MUTATION_FULL_TIMEOUT_S (default 600 s; the full tests/core take about 60 s) counts as
# caught by the timeout, as in mutmut's own pass. Each line of full-pass.txt: "name status".
export venv
full_timeout_s="${MUTATION_FULL_TIMEOUT_S:-600}"
export full_timeout_s
xargs -r -P "${jobs}" -I NAME bash -c '
    cd mutants
    MUTANT_UNDER_TEST="$1" timeout "${full_timeout_s}" "${venv}/python" -m pytest -x -q \
        -p no:cacheprovider -p no:randomly tests/core >/dev/null 2>&1
    echo "$1 $?"' _ NAME <quick-survivors.txt >full-pass.txt
mapfile -t survivors < <(awk '$2 == 0 {print $1}' full-pass.txt | sort)
killed_by_full="$(awk '$2 != 0 && $2 != 124 {n++} END {print n + 0}' full-pass.txt)"
timeouts_full="$(awk '$2 == 124 {n++} END {print n + 0}' full-pass.txt)"
echo "full pass: ${killed_by_full} killed, ${timeouts_full} timeout, ${#survivors[@]} survived"
echo "surviving mutants (show one with: cd ${work} && ${venv}/mutmut show NAME):"
for name in "${survivors[@]}"; do
    echo "    ${name}"
done
if [ "${#survivors[@]}" -gt 0 ]; then
    exit 1
fi
