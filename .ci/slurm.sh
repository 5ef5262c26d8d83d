#!/usr/bin/env bash
# Builds the default recipe's submission.jsonl through a real Slurm cluster: one node, `localhost`,
# started here from Debian's packages, with `snakemake --profile profiles/slurm`.
#   sudo bash .ci/slurm.sh      # as root, in the project's venv; ~8 min on 2 cores
# Everything lives in a fresh temporary folder but the apt packages and /etc/slurm/{slurm,gres}.conf,
# removed at the end; its own munge key and socket and its own ports keep clear of any other munge.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/tunesmith-slurm.XXXXXX)
chmod 755 "$WORK"  # munged insists that everyone can reach its socket
echo "slurm.sh: working in $WORK"

# 1. Slurm 22.05 and munge from Debian (about 10 s once the package lists are there).
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq slurm-wlm munge >/dev/null

# 2. However the script ends, stop the daemons it started, by pid, and take its config back out.
#    The config must sit where Slurm looks by default, /etc/slurm: the plugin clears SLURM_CONF
#    (all SLURM_* but the job's id) before it calls srun inside each job.
CONFIG=/etc/slurm
unset SLURM_CONF
MARK="# written by tunesmith's .ci/slurm.sh, removed when it ends"
if [ -e "$CONFIG/slurm.conf" ] && ! grep -qxF "$MARK" "$CONFIG/slurm.conf"; then
    echo "slurm.sh: $CONFIG/slurm.conf belongs to another cluster; not touching it" >&2
    exit 1
fi
PIDS=()
clean_up() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$CONFIG/slurm.conf" "$CONFIG/gres.conf"
}
trap clean_up EXIT

# 3. munge authenticates Slurm's messages. A key and socket of our own; run as root in the foreground
#    so that $! is the daemon.
mungekey -c -k "$WORK/munge.key"
munged -F --socket="$WORK/munge.sock" --key-file="$WORK/munge.key" --pid-file="$WORK/munged.pid" \
    --log-file="$WORK/munged.log" --seed-file="$WORK/munged.seed" >"$WORK/munged.out" 2>&1 &
PIDS+=($!)

# 4. The cluster: one node with this machine's CPUs and one GPU. The GPU is /dev/null, so that jobs
#    asking `--gpus=1` are scheduled on a machine without one. The node claims 256 GB of memory
#    (config_overrides: slurm.conf, not the hardware, says what the node has), so that the profile's
#    job sizes, which fit the 13B recipe, are submitted unchanged; nothing enforces them here. No
#    systemd and no cgroups: linuxproc tracks a job's processes, and task/none binds nothing. Without
#    slurmdbd only squeue knows a job's state, for MinJobAge seconds after it ends. Two free ports,
#    not 6817/6818.
read -r CONTROLLER_PORT NODE_PORT < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(2)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
CPUS=$(nproc)
MEMORY_MB=256000
mkdir -p "$WORK/state" "$WORK/spool" "$CONFIG"
cat >"$CONFIG/slurm.conf" <<EOF
$MARK
ClusterName=tunesmith
SlurmctldHost=localhost
SlurmctldPort=$CONTROLLER_PORT
SlurmdPort=$NODE_PORT
SlurmUser=root
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge.sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
SlurmctldDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MinJobAge=900
ReturnToService=2
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=localhost Name=gpu File=/dev/null" >"$CONFIG/gres.conf"

# 5. The controller and the node daemon, as root, in the foreground (-D) so that $! is the daemon.
slurmctld -D >"$WORK/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -N localhost >"$WORK/slurmd.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 60); do
    [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" = idle ] && break
    sleep 1
done
sinfo -N -o '%N %t %c %m %G' || true
if [ "$(sinfo -h -n localhost -o %t 2>/dev/null)" != idle ]; then
    echo "slurm.sh: the node never became idle" >&2
    tail -n 20 "$WORK"/slurmctld.log "$WORK"/slurmd.log "$WORK"/*.out >&2 || true
    exit 1
fi

# 6. The workflow, as a user runs it, in a working directory of its own. Targets go before
#    --config, which takes several values. --cores: this machine's CPUs, not the profile's 8 per job
#    (each model job would run 8 threads on them). Bounded: a lost job must not hang CI.
#    The default recipe with a few training steps per stage: every rule and job size goes through
#    Slurm as in the default run, in a fraction of its time (the tests build the default itself).
RUN=$WORK/run
mkdir "$RUN" && ln -s "$REPO/data" "$RUN/data" && cd "$RUN"
python3 "$REPO/tests/quick_recipe.py" "$REPO/recipes/default.yaml" "$RUN/quick.yaml"
start=$SECONDS
timeout -k 30 1500 snakemake submission.jsonl -s "$REPO/Snakefile" --profile "$REPO/profiles/slurm" \
    --cores "$CPUS" --config recipe="$RUN/quick.yaml"
echo "slurm.sh: workflow took $((SECONDS - start)) s"

# 7. The submission is complete and valid...
python3 -c 'from tunesmith.submission import validate_submission
print("slurm.sh: valid submission rows:", validate_submission("submission.jsonl", "data/tasks.jsonl"))'

# 8. ...and every job went through sbatch: each one Snakemake ran, the controller logged as submitted
#    and the job left its Slurm log, and the model jobs (`resources: gpu=1`) got the pretend GPU.
ran=$(grep -c 'has been submitted with SLURM jobid' .snakemake/log/*.snakemake.log || true)
submitted=$(grep -c '_slurm_rpc_submit_batch_job: JobId=' "$WORK/slurmctld.log" || true)
job_logs=$(find logs/slurm -name '*.log' | wc -l)
squeue --states=all -O 'JobID:6,Comment:34,State:11,NumCPUs:5,MinMemory:8,tres-per-job'
gpu_jobs=$(squeue -h --states=all -O tres-per-job | grep -c 'gpu:1' || true)
echo "slurm.sh: $ran jobs run, $submitted submitted through sbatch, $job_logs job logs, $gpu_jobs with a GPU"
[ "$ran" -gt 0 ] && [ "$submitted" -eq "$ran" ] && [ "$job_logs" -eq "$ran" ] && [ "$gpu_jobs" -gt 0 ]

# 9. ...each with the memory and time limit the profile gives its rule (the plugin adds a little
#    memory for its own job step, so at least the profile's memory).
squeue -h --states=all -O 'Comment:200,MinMemory:20,TimeLimit:20' | python3 -c '
import re, sys, yaml

def minutes(limit):  # squeue: [days-]hours:minutes:seconds, or minutes:seconds
    days, _, clock = limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    hours, mins = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return int(days or 0) * 1440 + hours * 60 + mins

profile = yaml.safe_load(open(sys.argv[1]))
checked = 0
for line in sys.stdin:
    comment, memory, limit = line.split()
    rule = re.match(r"rule_(.+?)(?:_wildcards_|$)", comment)[1]
    size = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
    memory_mb = float(memory[:-1]) * {"M": 1, "G": 1024, "T": 1024 ** 2}[memory[-1]]
    assert memory_mb >= size["mem_mb"] and minutes(limit) == size["runtime"], (rule, memory, limit, size)
    checked += 1
print(f"slurm.sh: {checked} jobs got their memory and time limit from the profile")
assert checked > 0
' "$REPO/profiles/slurm/config.yaml"
