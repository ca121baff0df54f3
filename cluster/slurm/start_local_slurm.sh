#!/usr/bin/env bash
# Start a one-node SLURM (munge + slurmctld + slurmd, loopback only) for the dask-jobqueue tests.
# Installs Debian's slurm-wlm and munge when they are missing and we are root with apt-get.
# Idempotent: returns at once when the local cluster already answers. Exit 3: cannot install.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null; }
  else
    echo "slurm-wlm is not installed and cannot be (needs root and apt-get)" >&2
    exit 3
  fi
fi
[ "$(id -u)" = 0 ] || { echo "starting slurmctld/slurmd needs root" >&2; exit 3; }

CONF_DIR=/etc/slurm
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 0400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force

CPUS=$(nproc --all)  # not `nproc`: it follows OMP_NUM_THREADS, which Dask sets to 1
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
# Cores are consumable and not shared, as on a real cluster: a job that asks for a core waits for one.
cat > "$CONF_DIR/slurm.conf.new" <<CONF
ClusterName=rtsflow-local
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
rm -f "$CONF_DIR/cgroup.conf"
if cmp -s "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf" && sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mix|alloc"; then
  rm -f "$CONF_DIR/slurm.conf.new"
  exit 0  # already running with this configuration
fi
mv "$CONF_DIR/slurm.conf.new" "$CONF_DIR/slurm.conf"
# (Re)start the daemons so they read this configuration.
pkill -x slurmd 2>/dev/null || true
pkill -x slurmctld 2>/dev/null || true
for _ in $(seq 1 20); do pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null || break; sleep 0.5; done
slurmctld
slurmd -N localhost
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -Eq "idle|mix|alloc"; then
    exit 0
  fi
  sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/" >&2
exit 1
