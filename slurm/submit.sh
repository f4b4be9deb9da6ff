#!/usr/bin/env bash
# Submit plan neva-prep to Slurm: the model job and every dataset's shard
# array start at once; each merge waits for all tasks of its array (afterok) and is cancelled
# if one fails; a dataset's export and check wait for its merge, their finalize / --merge for
# their array. Run it from the directory the logs should go under. Re-running is safe:
# finished shards are skipped. Prints one `JOBNAME JOBID` line per job.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p -- logs

submit() {  # submit JOBNAME SCRIPT [SBATCH-OPTION...]: sets $job to the job id
  local name=$1 script=$2
  shift 2
  job=$(sbatch --parsable "$@" "$here/$script")
  job=${job%%;*}
  echo "$name $job"
}

submit neva-prep-model model.sbatch
submit neva-prep-webvid data-webvid.sbatch; job_1=$job
submit neva-prep-webvid-merge merge-webvid.sbatch --dependency=afterok:$job_1
submit neva-prep-llava-pretrain data-llava-pretrain.sbatch; job_3=$job
submit neva-prep-llava-pretrain-merge merge-llava-pretrain.sbatch --dependency=afterok:$job_3; job_4=$job
submit neva-prep-llava-pretrain-energon energon-llava-pretrain.sbatch --dependency=afterok:$job_4; job_5=$job
submit neva-prep-llava-pretrain-energon-index energon-index-llava-pretrain.sbatch --dependency=afterok:$job_5
submit neva-prep-llava-pretrain-check check-llava-pretrain.sbatch --dependency=afterok:$job_4; job_7=$job
submit neva-prep-llava-pretrain-check-merge check-merge-llava-pretrain.sbatch --dependency=afterok:$job_7
