#!/usr/bin/env bash
# Job status for snakemake-executor-plugin-cluster-generic: prints running, success or failed.
# slurmctld knows a job until MinJobAge after it ends (scontrol); after that only sacct
# (slurmdbd accounting) does. Unknown to both (just submitted, or purged on a cluster without
# accounting): "running". Snakemake polls every few seconds, well inside MinJobAge (300 s by
# default), so it sees every job's final state.
jobid="$1"
state=$(scontrol show job -o "$jobid" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2)
if [ -z "$state" ]; then
  state=$(sacct -X -n -P -j "$jobid" -o State 2>/dev/null | head -n1 | cut -d' ' -f1)
fi
case "$state" in
  COMPLETED) echo success ;;
  PENDING|CONFIGURING|RUNNING|COMPLETING|SUSPENDED|REQUEUED|REQUEUE_HOLD|REQUEUE_FED|RESIZING|SIGNALING|STAGE_OUT|STOPPED|PREEMPTED) echo running ;;
  "") echo running ;;
  *) echo failed ;;   # FAILED CANCELLED TIMEOUT OUT_OF_MEMORY NODE_FAIL BOOT_FAIL DEADLINE ...
esac
