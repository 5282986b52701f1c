#!/usr/bin/env bash
# Run `harness gate RUN_DIR` in a CI job and turn its exit code into the job's verdict.
#
#   ci/gate.sh RUN_DIR [--inconclusive pass|fail]
#
# harness gate exits 0 (every gated check passes), 1 (a gated check fails: a credible
# regression, a `no_difference`/`improves` expectation contradicted, or a figure of an exact
# baseline moved), 3 (some gated row is inconclusive, none fails) or 2 (it could not evaluate
# the run: a missing directory, a corrupt trace). This script:
#   0 -> 0; 1 -> 1 with an error annotation; 3 -> 0 with a warning annotation
#   (`--inconclusive fail`: 3 -> 3); anything else -> that code, with an error annotation.
# Inconclusive passes by default because a verdict needs >= 6 paired seeds at alpha 0.05
# (docs/comparisons-and-gate.md): the one-seed PR smoke and the 5-seed study grids can
# never be conclusive, and a job that is red every night is a job nobody reads.
# The gate's table goes to RUN_DIR/gate.txt (uploaded with the report) and to the job summary.
set -uo pipefail

run="${1:?usage: ci/gate.sh RUN_DIR [--inconclusive pass|fail]}"
inconclusive=pass
if [[ "${2:-}" == "--inconclusive" ]]; then
  inconclusive="${3:?--inconclusive needs pass or fail}"
fi
case "$inconclusive" in pass|fail) ;; *) echo "error: --inconclusive $inconclusive: pass or fail" >&2; exit 2 ;; esac

log=/dev/null
[[ -d "$run" ]] && log="$run/gate.txt"
COLUMNS="${COLUMNS:-160}" harness gate "$run" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

if [[ -n "${GITHUB_STEP_SUMMARY:-}" && -f "$log" ]]; then
  { echo "### harness gate $(basename "$(dirname "$run")")/$(basename "$run"): exit $rc"
    echo '```'; cat "$log"; echo '```'; } >>"$GITHUB_STEP_SUMMARY"
fi

case "$rc" in
  0) echo "gate: pass" ;;
  1) echo "::error title=harness gate::$run: a gated comparison failed (rows with outcome fail in the table above; docs/ci.md, 'Reading a gate failure')"
     exit 1 ;;
  3) if [[ "$inconclusive" == fail ]]; then
       echo "::error title=harness gate::$run: inconclusive (too few seeds or too noisy)"
       exit 3
     fi
     echo "::warning title=harness gate::$run: inconclusive (too few seeds or too noisy), none failing; not failing the job" ;;
  *) echo "::error title=harness gate::harness gate could not evaluate $run (exit $rc)"
     exit "$rc" ;;
esac
