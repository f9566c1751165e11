#!/usr/bin/env bash
# Slurm prolog (runs as root on each node before a job): make sure the WarpDrive mount answers,
# restarting the agent once if it does not, then warm the job's data into the cache.
#
#   WARPDRIVE_MOUNT          the mount point (/wd)
#   WARPDRIVE_METRICS_URL    the agent's health endpoint base (http://127.0.0.1:9090)
#   WARPDRIVE_WARMUP_PATH    what to warm before the job starts (none: skip); set it in the
#                            job's environment (sbatch --export) or slurm.conf's PrologFlags
#   WARPDRIVE_WARMUP_SHARDS  or: the job's shard URLs as its ShardDataset is given them
#                            (space-separated patterns, braces and globs, one per region); only
#                            this node's share is warmed, the shards it reads every epoch
#   WARPDRIVE_WARMUP_SEED    the dataset's seed (0)
#                            The node's rank and count: SLURM_NODEID/SLURM_NNODES where set,
#                            else this node's place in SLURM_JOB_NODELIST (how Slurm numbers
#                            nodes), found with scontrol
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

# Healthy: the mount point is a mount, a byte of its health file reads, and the agent's /healthz
# answers 200. The read is what ties the check to $MOUNT: for a while after the agent died the
# kernel still answers a stat there from cached attributes (mountpoint passes), and /healthz may
# be another process's; an open and a read of /.warpdrive-health, which the mount serves itself
# (no backend), reach the agent or fail: at once on a dead mount, after 5 s on a hung one.
healthy() {
  mountpoint -q "$MOUNT" &&
    [[ -n "$(timeout -s KILL 5 head -c 1 "$MOUNT/.warpdrive-health" 2>/dev/null)" ]] &&
    curl -fsS --max-time 5 "$HEALTH" >/dev/null 2>&1
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

# This node's index among the job's nodes, and their count: Slurm's numbering (the order of
# the expanded node list) is what SLURM_NODEID, and so the dataset, will see.
node_rank_and_count() {
  if [[ -n "${SLURM_NODEID:-}" && -n "${SLURM_NNODES:-}" ]]; then
    echo "$SLURM_NODEID $SLURM_NNODES"
    return
  fi
  local hosts i
  mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?}")
  for i in "${!hosts[@]}"; do
    if [[ "${hosts[$i]}" == "${SLURMD_NODENAME:-$(hostname -s)}" ]]; then
      echo "$i ${#hosts[@]}"
      return
    fi
  done
  return 1
}

if [[ -n "${WARPDRIVE_WARMUP_SHARDS:-}" ]]; then
  read -r -a patterns <<<"$WARPDRIVE_WARMUP_SHARDS" # split on spaces, globs left to warm
  if read -r node nodes < <(node_rank_and_count); then
    log "warming node $node of $nodes's shards of $WARPDRIVE_WARMUP_SHARDS"
    if "$CTL" warm --num-nodes "$nodes" --node-rank "$node" --seed "${WARPDRIVE_WARMUP_SEED:-0}" \
      --max-size "${WARPDRIVE_WARMUP_MAX_SIZE:-50GB}" --workers "${WARPDRIVE_WARMUP_WORKERS:-32}" \
      --json -- "${patterns[@]}" >>"$LOG" 2>&1; then
      log "warm-up done"
    else
      log "warm-up failed (status $?): the job reads what is missing on demand"
    fi
  else
    log "warm-up skipped: this node is not in SLURM_JOB_NODELIST"
  fi
elif [[ -n "${WARPDRIVE_WARMUP_PATH:-}" ]]; then
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
