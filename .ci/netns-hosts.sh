#!/usr/bin/env bash
# Test "hosts" on one machine: network namespaces ranks-h1..ranks-hN, each with its own
# address on a bridge (10.77.0.1x/24, the launcher's side is 10.77.0.1) and its own sshd,
# reachable as `ssh ranks-hN` with a key made here. Needs root, iproute2 and openssh-server.
#   bash .ci/netns-hosts.sh up [N]    (default N=2; safe to run again)
#   bash .ci/netns-hosts.sh down
set -euo pipefail
cmd=${1:-up}
count=${2:-2}
key=/root/.ssh/id_ranks_test
conf=/etc/ranks-test-sshd_config

down() {
  for pidf in /run/ranks-test-sshd-*.pid; do
    [ -e "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
    rm -f "$pidf"
  done
  for ns in $(ip netns list | awk '/^ranks-h/ {print $1}'); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns"
  done
  ip link del rkbr0 2>/dev/null || true
}

if [ "$cmd" = down ]; then
  down
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "netns hosts need root"; exit 1; }
command -v ip >/dev/null || { echo "netns hosts need iproute2 (ip)"; exit 1; }
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || { echo "netns hosts need openssh-server (sshd)"; exit 1; }

down
mkdir -p /run/sshd /root/.ssh
chmod 700 /root/.ssh
ssh-keygen -A >/dev/null
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -f "$key"
touch /root/.ssh/authorized_keys
grep -qF "$(cat "$key.pub")" /root/.ssh/authorized_keys || cat "$key.pub" >> /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys

cat > "$conf" <<CONF
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
StrictModes no
ClientAliveInterval 1
ClientAliveCountMax 5
MaxStartups 100
MaxSessions 100
Subsystem sftp internal-sftp
CONF

ip link add rkbr0 type bridge
ip addr add 10.77.0.1/24 dev rkbr0
ip link set rkbr0 up
# Bridged frames must not meet the host firewall (a FORWARD policy of DROP, e.g. Docker's).
if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
  echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables || true
fi

touch /root/.ssh/config
sed -i '/^# ranks-test-hosts begin/,/^# ranks-test-hosts end/d' /root/.ssh/config
sed -i '/ ranks-h[0-9]*$/d' /etc/hosts
{
  echo "# ranks-test-hosts begin"
  echo "Host ranks-h*"
  echo "  IdentityFile $key"
  echo "  StrictHostKeyChecking no"
  echo "  UserKnownHostsFile /dev/null"
  echo "  LogLevel ERROR"
  echo "# ranks-test-hosts end"
} >> /root/.ssh/config
chmod 600 /root/.ssh/config

for i in $(seq 1 "$count"); do
  ns=ranks-h$i
  addr=10.77.0.$((10 + i))
  ip netns add "$ns"
  ip link add "rkv$i" type veth peer name "rkh$i"
  ip link set "rkh$i" netns "$ns"
  ip link set "rkv$i" master rkbr0 up
  ip -n "$ns" addr add "$addr/24" dev "rkh$i"
  ip -n "$ns" link set "rkh$i" up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via 10.77.0.1
  echo "$addr $ns" >> /etc/hosts
  ip netns exec "$ns" "$SSHD" -f "$conf" -o "ListenAddress=$addr" \
    -o "PidFile=/run/ranks-test-sshd-h$i.pid"
done

for i in $(seq 1 "$count"); do
  ok=
  for _ in $(seq 1 50); do
    if ssh -o BatchMode=yes -o ConnectTimeout=2 "ranks-h$i" true 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "ssh to ranks-h$i does not work"; ssh -v -o BatchMode=yes "ranks-h$i" true || true; exit 1; }
done
echo "netns hosts up: $(seq -s ' ' -f 'ranks-h%g' 1 "$count")"
