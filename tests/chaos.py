#!/usr/bin/env python3
"""Chaos test: run jobs and break them at random moments; count what went wrong.

    python3 tests/chaos.py N [--hosts] [--seed S]

Each run starts `ranks run` with the `chaos` test job (all-reduces, a ring exchange and a
lock, for 0.7 s; in half the runs also a ring of 4 MiB messages every fourth round) on 2-5 ranks on this host (any transport), or, with --hosts, sometimes on
the netns test hosts (`sudo bash .ci/netns-hosts.sh up 4`). After a random delay it does
one of: nothing; SIGKILL, SIGTERM or SIGSTOP to a random rank; SIGINT or SIGKILL to the
launcher; and across hosts also SIGKILL to an agent or taking a host's link down. Then it
checks that
  - the launcher ends within 20 s of the fault (else: a hang),
  - its exit code is the one the fault calls for (or 0 when the fault came after the job
    had finished),
  - no process of the run and no file of the job (/dev/shm, temp dir) is left 5 s later
    (after a launcher SIGKILL, the next launcher must remove the files: one is started).
It prints one line per run and a summary; the exit code is 1 if anything went wrong.
Build first: cargo build --release --bins -p ranks-launcher -p ranks-tests (or point
RANKS_BIN_DIR at a directory holding `ranks` and `ranks-testjob`).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("RANKS_BIN_DIR") or os.path.join(ROOT, "target", "release")
RANKS = os.path.join(BIN, "ranks")
JOB = os.path.join(BIN, "ranks-testjob")
HOSTS = ["ranks-h1", "ranks-h2", "ranks-h3"]


def procs_with_mark(mark):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if f"RANKS_TEST_MARK={mark}".encode() in env.split(b"\0"):
            found.append(int(pid))
    return found


def rank_pids(mark):
    out = {}
    for pid in procs_with_mark(mark):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(
                    kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv
                )
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            continue
        if exe.endswith("ranks-testjob") and b"RANKS_RANK" in env:
            out[int(env[b"RANKS_RANK"])] = pid
    return out


def agent_pids(launcher):
    """`ranks agent` processes of this launcher's job (they run in the netns hosts)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if len(cmd) > 1 and cmd[0].endswith(b"ranks") and cmd[1] == b"agent":
            out.append(int(pid))
    return out


def files_of(launcher):
    pid = str(launcher)
    left = []
    for d in ("/dev/shm", tempfile.gettempdir()):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if not n.startswith("ranks-"):
                continue
            parts = n[len("ranks-"):].split("-")
            if parts[:1] == [pid] or parts[1:2] == [pid]:
                left.append(os.path.join(d, n))
    return left


def link_of(host):
    out = subprocess.run(
        ["ip", "netns", "exec", host, "ip", "-o", "link", "show"],
        capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            return name
    return None


def one_run(i, rng, hosts_ok):
    mark = f"chaos-{os.getpid()}-{i}"
    multi = hosts_ok and rng.random() < 0.25
    if multi:
        n = 4
        where = ["--host", "ranks-h1:2,ranks-h2:2"] if rng.random() < 0.5 else \
            ["--host", "ranks-h1:1,ranks-h2:2,ranks-h3:1"]
        faults = ["none", "rank-kill", "rank-term", "launcher-int", "agent-kill", "link-down"]
    else:
        n = rng.randint(2, 5)
        where = ["--transport", rng.choice(["shm", "shm", "uds", "quic"])]
        faults = ["none", "rank-kill", "rank-kill", "rank-term", "rank-stop", "launcher-int",
                  "launcher-kill"]
    fault = rng.choice(faults)
    keep = rng.random() < 0.3
    delay = rng.uniform(0.0, 0.8)
    cmd = [RANKS, "run", "-n", str(n), *where, "--timeout", "5",
           "-x", f"RANKS_TEST_MARK={mark}"]
    if keep:
        cmd.append("--keep-going")
    # Half the runs also pass 4 MiB messages around the ring (pulled, and shared with
    # their senders over shm), so faults land in the middle of large copies too.
    big = rng.random() < 0.5
    cmd += [JOB, "chaos", "700"] + (["524288"] if big else [])
    env = dict(os.environ, RANKS_TEST_MARK=mark)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         text=True)
    desc = (f"run {i}: n={n} {' '.join(where)} keep={keep} big={big} fault={fault} "
            f"at {delay:.2f}s")
    # Wait until every rank runs.
    start = time.time()
    while len(rank_pids(mark)) < n and p.poll() is None and time.time() - start < 20:
        time.sleep(0.01)
    time.sleep(delay)
    want = {0}
    down = None
    ranks_now = rank_pids(mark)
    victim = rng.choice(sorted(ranks_now)) if ranks_now else None
    try:
        if fault == "rank-kill" and victim is not None:
            os.kill(ranks_now[victim], signal.SIGKILL)
            want = {137}
        elif fault == "rank-term" and victim is not None:
            os.kill(ranks_now[victim], signal.SIGTERM)
            want = {143}
        elif fault == "rank-stop" and victim is not None:
            os.kill(ranks_now[victim], signal.SIGSTOP)
            # The timeout ends the job; over QUIC, peers may first give the silent rank up
            # as lost (its connections time out) and fail on that (exit 1).
            want = {124} if "quic" not in where else {124, 1}
        elif fault == "launcher-int":
            p.send_signal(signal.SIGINT)
            want = {130}
        elif fault == "launcher-kill":
            p.kill()
            want = {-9}
        elif fault == "agent-kill":
            agents = agent_pids(p.pid)
            if agents:
                os.kill(rng.choice(agents), signal.SIGKILL)
            want = {255}
        elif fault == "link-down":
            host = rng.choice(["ranks-h1", "ranks-h2"])
            dev = link_of(host)
            if dev:
                subprocess.run(["ip", "netns", "exec", host, "ip", "link", "set", dev, "down"])
                down = (host, dev)
            want = {255}
    except ProcessLookupError:
        pass  # the target had already ended
    fault_at = time.time()
    try:
        out, err = p.communicate(timeout=20)
        hang = False
    except subprocess.TimeoutExpired:
        hang = True
        p.kill()
        out, err = p.communicate()
    if down:
        subprocess.run(["ip", "netns", "exec", down[0], "ip", "link", "set", down[1], "up"])
        # The host's route goes with the link: put it back.
        subprocess.run(["ip", "netns", "exec", down[0], "ip", "route", "replace", "default",
                        "via", "10.77.0.1"], stderr=subprocess.DEVNULL)
    took = time.time() - fault_at
    code = p.returncode
    finished = out.count("chaos ok rank") == n
    problems = []
    if hang:
        problems.append("hang")
    elif code not in want and not (finished and code == 0):
        # A fault can also land while the job is ending: then its own code or 0 will do.
        problems.append(f"exit code {code}, wanted {sorted(want)}")
    deadline = time.time() + 5
    while time.time() < deadline and (procs_with_mark(mark) or files_of(p.pid)):
        if fault in ("launcher-kill", "agent-kill"):
            # The next launcher (or agent) removes what a killed one left.
            subprocess.run([RANKS, "run", "-n", "1", JOB, "sleep", "0"], capture_output=True)
        time.sleep(0.2)
    left = procs_with_mark(mark)
    files = files_of(p.pid)
    if left:
        problems.append(f"processes left: {left}")
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    if files:
        problems.append(f"files left: {files}")
    status = "ok" if not problems else "PROBLEM: " + "; ".join(problems)
    print(f"{desc}: exit {code} {took:.2f}s after the fault: {status}", flush=True)
    if problems:
        tail = "\n".join(err.strip().splitlines()[-8:])
        print(f"    stderr: {tail}", flush=True)
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=int)
    ap.add_argument("--hosts", action="store_true", help="use the netns test hosts too")
    ap.add_argument("--seed", type=int, default=None)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int(time.time())
    rng = random.Random(seed)
    print(f"chaos: {a.runs} runs, seed {seed}, hosts {a.hosts}", flush=True)
    kinds = {}
    bad = 0
    for i in range(a.runs):
        problems = one_run(i, rng, a.hosts)
        for pr in problems:
            k = pr.split(":")[0].split(",")[0]
            kinds[k] = kinds.get(k, 0) + 1
        bad += bool(problems)
    print(f"chaos: {a.runs} runs, {bad} with problems {kinds or ''}", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
