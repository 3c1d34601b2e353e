#!/usr/bin/env bash
# A one-machine Slurm cluster for the Slurm tests (tests/tests/slurm.rs): munge, slurmctld
# and a slurmd for this host (partition "main", 8 CPUs declared, more than the machine has:
# SlurmdParameters=config_overrides); when the netns test hosts are up
# (.ci/netns-hosts.sh up N), a slurmd inside each of them too (partition "hosts").
# Usage: sudo bash .ci/slurm.sh up|down|status
set -euo pipefail
cmd=${1:-up}
host=$(hostname -s)
conf=/etc/slurm/slurm.conf
case "$cmd" in
up)
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  # Slurm's daemons and srun look this machine's name up.
  getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
  mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge /etc/slurm \
    /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  # The netns test hosts (.ci/netns-hosts.sh), if they are up, become nodes of their own,
  # each with a slurmd inside its namespace, in the partition "hosts".
  ctl_addr="(127.0.0.1)"
  netns_nodes=""
  hosts=$(ip netns list 2>/dev/null | awk '/^ranks-h/ {print $1}' | sort)
  if [ -n "$hosts" ] && ip addr show rkbr0 >/dev/null 2>&1; then
    ctl_addr="(10.77.0.1)"
    for h in $hosts; do
      addr=$(awk -v h="$h" '$2 == h {print $1}' /etc/hosts | head -1)
      netns_nodes="$netns_nodes
NodeName=$h NodeAddr=$addr CPUs=4 State=UNKNOWN"
    done
    netns_nodes="$netns_nodes
PartitionName=hosts Nodes=$(echo $hosts | tr ' ' ',') MaxTime=INFINITE State=UP"
  fi
  mkdir -p /var/spool/slurmd
  cat > "$conf" <<CONF
ClusterName=ranks
SlurmctldHost=$host$ctl_addr
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=8 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
$netns_nodes
CONF
  pkill -x slurmd || true
  pkill -x slurmctld || true
  sleep 0.5
  slurmctld
  mkdir -p "/var/spool/slurmd/$host"
  slurmd -N "$host"
  if [ -n "$netns_nodes" ]; then
    for h in $hosts; do
      # nsenter (not `ip netns exec`, which mounts a sysfs of its own without the cgroups
      # slurmd needs) switches only the network namespace.
      mkdir -p "/var/spool/slurmd/$h"
      nsenter --net="/run/netns/$h" slurmd -N "$h"
    done
  fi
  want=$((1 + $(echo $hosts | wc -w)))
  [ -n "$netns_nodes" ] || want=1
  for _ in $(seq 60); do
    up=$(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated)/' | sort -u | wc -l)
    if [ "$up" -ge "$want" ]; then
      sinfo
      exit 0
    fi
    for n in $(sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /down|drain/ {print $1}'); do
      scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
    done
    sleep 0.5
  done
  echo "slurm did not come up"; sinfo || true; tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log || true
  exit 1
  ;;
down)
  pkill -x slurmd || true
  pkill -x slurmctld || true
  ;;
status)
  sinfo
  ;;
esac
