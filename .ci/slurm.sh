#!/usr/bin/env bash
# Builds the default recipe's submission.jsonl through a real Slurm cluster of two nodes on this host
# (`node1` and `node2`, one slurmd each: Debian's Slurm is built with multiple-slurmd support),
# started here from Debian's packages, with `snakemake --profile profiles/slurm`; then trains across
# both nodes (distributed.nodes: 2) through the same profile.
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

# 4. The cluster: two nodes, each with this machine's CPUs and one GPU. The GPU is /dev/null, so that jobs
#    asking `--gpus=1` are scheduled on a machine without one. The node claims 256 GB of memory
#    (config_overrides: slurm.conf, not the hardware, says what the node has), so that the profile's
#    job sizes, which fit the 13B recipe, are submitted unchanged; nothing enforces them here. No
#    systemd and no cgroups: linuxproc tracks a job's processes, and task/none binds nothing. Without
#    slurmdbd only squeue knows a job's state, for MinJobAge seconds after it ends. Three free ports
#    (the controller's and one per node daemon), not 6817/6818; the spool, pid and log files of each
#    node daemon are its own (%n, the node's name).
read -r CONTROLLER_PORT NODE_PORT NODE2_PORT < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(3)]
for s in sockets: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))')
CPUS=$(nproc)
MEMORY_MB=256000
mkdir -p "$WORK/state" "$WORK/spool/node1" "$WORK/spool/node2" "$CONFIG"
cat >"$CONFIG/slurm.conf" <<EOF
$MARK
ClusterName=tunesmith
SlurmctldHost=localhost
SlurmctldPort=$CONTROLLER_PORT
SlurmUser=root
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge.sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool/%n
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.%n.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.%n.log
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
NodeName=node1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$NODE_PORT CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:1 State=UNKNOWN
NodeName=node2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$NODE2_PORT CPUs=$CPUS RealMemory=$MEMORY_MB Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=node1,node2 Default=YES MaxTime=INFINITE State=UP
EOF
printf 'NodeName=node1 Name=gpu File=/dev/null\nNodeName=node2 Name=gpu File=/dev/null\n' >"$CONFIG/gres.conf"

# 5. The controller and the two node daemons, as root, in the foreground (-D) so that $! is the daemon.
slurmctld -D >"$WORK/slurmctld.out" 2>&1 &
PIDS+=($!)
for node in node1 node2; do
    slurmd -D -N "$node" >"$WORK/slurmd.$node.out" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 60); do
    [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" = idle ] && break
    sleep 1
done
sinfo -N -o '%N %t %c %m %G' || true
if [ "$(sinfo -h -o %t 2>/dev/null | sort -u)" != idle ]; then
    echo "slurm.sh: the nodes never became idle" >&2
    tail -n 20 "$WORK"/slurmctld.log "$WORK"/slurmd.*.log "$WORK"/*.out >&2 || true
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
python3 -c 'from tunesmith.generation.submission import validate_submission
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

# 10. Training across the two nodes: the same quick recipe with distributed.nodes 2 (one process per
#     node; gloo on CPU). The plugin submits `sbatch --nodes=2 --ntasks=2 --gres=gpu:1`, the job's
#     launcher runs one `srun` task per node, each an `accelerate launch` with its node's rank, and the
#     ranks meet at the launching node's address. The target is the DPO adapter: only SFT and DPO rerun
#     (their keys hold distributed.nodes), and generation on one node was checked above.
cd "$RUN"
python3 -c 'import sys, yaml
recipe = yaml.safe_load(open(sys.argv[1]))
recipe.setdefault("distributed", {})["nodes"] = 2
yaml.safe_dump(recipe, open(sys.argv[2], "w"), allow_unicode=True, sort_keys=False)' "$RUN/quick.yaml" "$RUN/two_nodes.yaml"
DPO_ADAPTER=$(python3 -c 'import sys
from tunesmith.config import plan
from tunesmith.config.recipe import load_recipe
print("results/dpo/" + plan.steps(load_recipe(sys.argv[1]))["dpo"].key + "/adapter")' "$RUN/two_nodes.yaml")
start=$SECONDS
timeout -k 30 1200 snakemake "$DPO_ADAPTER" -s "$REPO/Snakefile" --profile "$REPO/profiles/slurm" \
    --cores "$CPUS" --config recipe="$RUN/two_nodes.yaml"
echo "slurm.sh: the two-node workflow took $((SECONDS - start)) s"
squeue -h --states=all -O 'Comment:60,NumNodes:6,NodeList:30,State:11' | grep -E 'rule_train_(sft|dpo)' || true
python3 -c 'import glob, json, subprocess
listed = subprocess.run(["squeue", "-h", "--states=all", "-O", "Comment:200,NumNodes:6,State:20"], capture_output=True,
                        text=True, check=True).stdout.splitlines()
spanned = [line.split() for line in listed if "rule_train_" in line]
two = [fields for fields in spanned if fields[1] == "2"]
assert sorted(fields[0].split("_wildcards")[0] for fields in two) == ["rule_train_preference_method", "rule_train_sft"], spanned
assert all(fields[2] == "COMPLETED" for fields in two), two
trained = [json.load(open(path)) for path in glob.glob("results/*/*/adapter/tunesmith.json")]
across = [meta for meta in trained if meta.get("nodes") == 2]
assert sorted(meta["stage"] for meta in across) == ["dpo", "sft"], [(m["stage"], m.get("nodes")) for m in trained]
assert all(meta["processes"] == 2 and meta["parallelism"] == "MULTI_CPU" for meta in across), across
print("slurm.sh: SFT and DPO trained across 2 nodes (2 processes), their jobs allocated 2 nodes each")'
