#!/usr/bin/env bash
# Slurm prolog (runs as root on each node before a job): make sure the WarpDrive mount answers,
# restarting the agent once if it does not, then warm the job's data into the cache.
#
#   WARPDRIVE_MOUNT          the mount point (/wd)
#   WARPDRIVE_METRICS_URL    the agent's health endpoint base (http://127.0.0.1:9090)
#   WARPDRIVE_WARMUP_PATH    what to warm before the job starts (none: skip); set it in the
#                            job's environment (sbatch --export) or slurm.conf's PrologFlags
#   WARPDRIVE_WARMUP_MAX_SIZE  at most this much (50GB)   WARPDRIVE_WARMUP_WORKERS  (32)
#   WARPDRIVE_LOG            /var/log/warpdrive/prolog.log
# Exit 1 (Slurm drains the node) only when the mount is still unhealthy after a restart;
# a failed warm-up is logged and the job runs anyway (reads fetch what is missing).
set -euo pipefail
MOUNT=${WARPDRIVE_MOUNT:-/wd}
HEALTH=${WARPDRIVE_METRICS_URL:-http://127.0.0.1:9090}/healthz
LOG=${WARPDRIVE_LOG:-/var/log/warpdrive/prolog.log}
CTL=${WARPDRIVE_CTL:-warpdrive-ctl}
mkdir -p "$(dirname "$LOG")"

log() { printf '%s job=%s %s\n' "$(date -u +%FT%TZ)" "${SLURM_JOB_ID:-?}" "$*" >>"$LOG"; }

healthy() {
  mountpoint -q "$MOUNT" && curl -fsS --max-time 5 "$HEALTH" >/dev/null 2>&1
}

if ! healthy; then
  log "mount $MOUNT unhealthy: restarting warpdrive-agent"
  systemctl restart warpdrive-agent || log "systemctl restart failed"
  for _ in $(seq 1 30); do
    healthy && break
    sleep 1
  done
  if ! healthy; then
    log "mount $MOUNT still unhealthy after a restart: failing the prolog (node drained)"
    exit 1
  fi
  log "mount $MOUNT healthy again"
fi

# The job's counters start here: the epilog's job-report is this job's share.
"$CTL" job-start --job-id "${SLURM_JOB_ID:-unknown}" --json >>"$LOG" 2>&1 || log "job-start failed"

if [[ -n "${WARPDRIVE_WARMUP_PATH:-}" ]]; then
  log "warming $WARPDRIVE_WARMUP_PATH"
  if "$CTL" warm "$WARPDRIVE_WARMUP_PATH" --recursive \
    --max-size "${WARPDRIVE_WARMUP_MAX_SIZE:-50GB}" --workers "${WARPDRIVE_WARMUP_WORKERS:-32}" \
    --json >>"$LOG" 2>&1; then
    log "warm-up done"
  else
    log "warm-up failed (status $?): the job reads what is missing on demand"
  fi
fi
exit 0
