#!/usr/bin/env bash
# Slurm epilog (runs as root on each node after a job): record the job's cache report — hits,
# misses, bytes fetched — and send it to the control plane when one is configured
# (warpdrive-ctl job-report). Never fails the node: a report is best effort.
#
#   WARPDRIVE_LOG  /var/log/warpdrive/epilog.log
set -uo pipefail
LOG=${WARPDRIVE_LOG:-/var/log/warpdrive/epilog.log}
CTL=${WARPDRIVE_CTL:-warpdrive-ctl}
mkdir -p "$(dirname "$LOG")"
{
  printf '%s job=%s ' "$(date -u +%FT%TZ)" "${SLURM_JOB_ID:-?}"
  "$CTL" job-report --job-id "${SLURM_JOB_ID:-unknown}" --user "${SLURM_JOB_USER:-unknown}" \
    --status "${SLURM_JOB_EXIT_CODE:-0}" --json 2>&1 | tr '\n' ' '
  printf '\n'
} >>"$LOG"
exit 0
