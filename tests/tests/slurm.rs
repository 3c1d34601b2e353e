//! `ranks run` inside Slurm allocations: real `salloc` and `sbatch` against a real Slurm
//! (`sudo bash .ci/slurm.sh up`: slurmctld and a slurmd for this machine, partition `main`,
//! and one slurmd inside each netns test host, partition `hosts`).
//!
//! Ignored by a plain `cargo test` (shown as ignored, with the reason); `-- --include-ignored`
//! runs them, as CI does after starting Slurm, and then a Slurm that is not up fails them.

use std::process::Command;
use std::time::{Duration, Instant};

use ranks_tests::*;

/// Slurm is up with the nodes these tests use; panics (a failure, not a skip) if not.
fn slurm_ready() {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = READY.get_or_init(|| {
        let out = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%N %P %T"])
            .output()
            .map_err(|e| format!("sinfo: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for node in ["ranks-h1", "ranks-h2", "ranks-h3"] {
            let up = text.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[0] == node && matches!(f[2], "idle" | "mixed" | "allocated")
            });
            if !up {
                return Err(format!("node {node} is not up in Slurm:\n{text}"));
            }
        }
        Ok(())
    });
    if let Err(why) = r {
        panic!("the Slurm tests need Slurm: {why}");
    }
}

/// What the job left in /dev/shm and the temp directory: every file of ours is named
/// `ranks-*` (these tests run alone, so any is this job's).
fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["/dev/shm".into(), std::env::temp_dir()] {
        if let Ok(d) = std::fs::read_dir(&dir) {
            for e in d.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("ranks-") {
                    out.push(dir.join(n).display().to_string());
                }
            }
        }
    }
    out
}

fn assert_nothing_left(o: &Outcome) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_with_mark(&o.mark);
        let files = leftovers();
        if procs.is_empty() && files.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "left behind: processes {procs:?}, files {files:?}\n{o:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `salloc SALLOC... ranks run LAUNCHER... PROGRAM ARGS...`.
fn in_allocation(salloc: &[&str], launcher: &[&str], program: &str, args: &[&str]) -> Outcome {
    let mark = format!("slurm-{}-{}", std::process::id(), rand_suffix());
    let mut cmd = Command::new("salloc");
    cmd.args(salloc)
        .arg(bin("ranks"))
        .arg("run")
        .args(launcher)
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin(program))
        .args(args);
    run_command(cmd, LIMIT, mark)
}

/// A `where` job placed ranks 0 and 1 on ranks-h1, 2 and 3 on ranks-h2, and each sees the
/// other rank of its node.
fn assert_two_per_node(o: &Outcome) {
    for (r, h) in [
        (0, "ranks-h1"),
        (1, "ranks-h1"),
        (2, "ranks-h2"),
        (3, "ranks-h2"),
    ] {
        let l = format!("where rank {r} on {h}");
        assert!(o.stdout.contains(&l), "{l}: {o:?}");
    }
    assert_eq!(
        o.lines_with("shares its host with 2 rank(s)").len(),
        4,
        "{o:?}"
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn without_n_a_job_takes_every_slot_of_the_allocation() {
    slurm_ready();
    let _alone = alone();
    let o = in_allocation(&["-p", "main", "-n", "3"], &[], "ranks-testjob", &["where"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.lines_with("shares its host with 3 rank(s)").len(),
        3,
        "{o:?}"
    );
    assert_nothing_left(&o);
}

#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn more_ranks_than_the_allocation_is_a_clear_error() {
    slurm_ready();
    let _alone = alone();
    let o = in_allocation(&["-p", "main", "-n", "2"], &["-n", "5"], "hello", &[]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr
            .contains("-n 5 is more than the 2 slot(s) of Slurm job"),
        "{o:?}"
    );
    assert_nothing_left(&o);
}

/// The agents on the other nodes start with srun; ranks talk over QUIC between the nodes.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn a_job_spans_the_nodes_of_the_allocation() {
    slurm_ready();
    let _alone = alone();
    let o = in_allocation(
        &["-p", "hosts", "-w", "ranks-h[1-2]", "--ntasks-per-node=2"],
        &[],
        "ranks-testjob",
        &["where"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_two_per_node(&o);
    assert_nothing_left(&o);

    let o = in_allocation(
        &["-p", "hosts", "-w", "ranks-h[1-3]", "-n", "6"],
        &[],
        "primes",
        &[],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("total: 283146 primes"), "{o:?}");
    assert_nothing_left(&o);
}

#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn a_killed_rank_ends_the_job_with_its_code_and_leaves_nothing() {
    slurm_ready();
    let _alone = alone();
    let o = in_allocation(
        &["-p", "hosts", "-w", "ranks-h[1-2]", "-n", "4"],
        &[],
        "ranks-testjob",
        &["fail", "sigkill", "3"],
    );
    assert_eq!(o.code, 137, "{o:?}");
    assert!(o.stderr.contains("ranks: rank 3 (pid"), "{o:?}");
    assert!(o.stderr.contains("on ranks-h2"), "{o:?}");
    assert_nothing_left(&o);
}

/// A batch script: `sbatch --wait` returns the job's exit code, the output file has the
/// job's output.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn an_sbatch_script_runs_the_job() {
    slurm_ready();
    let _alone = alone();
    let dir = std::env::temp_dir().join(format!("sbatch-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("job.sh");
    let out = dir.join("out.txt");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\n#SBATCH -p hosts\n#SBATCH -w ranks-h[1-2]\n#SBATCH -n 4\n{} run {}\n",
            bin("ranks").display(),
            bin("primes").display()
        ),
    )
    .unwrap();
    let st = Command::new("sbatch")
        .args(["--wait", "-o"])
        .arg(&out)
        .arg(&script)
        .output()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(st.status.success(), "{st:?}\n{text}");
    assert!(text.contains("total: 283146 primes"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    let until = Instant::now() + Duration::from_secs(10);
    while !leftovers().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(leftovers().is_empty(), "{:?}", leftovers());
}

/// `scancel` on a running job: the launcher is told to stop (SIGTERM), stops every rank on
/// every node, and nothing is left.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn scancel_stops_every_rank() {
    slurm_ready();
    let _alone = alone();
    let name = format!("scancel-test-{}", std::process::id());
    let mark = format!("slurm-{}-{}", std::process::id(), rand_suffix());
    let mut cmd = Command::new("salloc");
    cmd.args(["-p", "hosts", "-w", "ranks-h[1-2]", "-n", "4", "-J", &name])
        .arg(bin("ranks"))
        .args(["run", "-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"]);
    let canceller = {
        let (name, mark) = (name.clone(), mark.clone());
        std::thread::spawn(move || {
            // Once every rank runs, cancel the job by name.
            let up = wait_for_ranks(&mark, 4, Duration::from_secs(60));
            let st = Command::new("scancel").args(["-n", &name]).status();
            (up, st.map(|s| s.success()).unwrap_or(false))
        })
    };
    let o = run_command(cmd, LIMIT, mark);
    let (up, cancelled) = canceller.join().unwrap();
    assert!(
        up && cancelled,
        "ranks up {up}, scancel ok {cancelled}: {o:?}"
    );
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.elapsed < Duration::from_secs(50), "{o:?}");
    assert_nothing_left(&o);
}

/// `srun --mpi=pmi2 PROGRAM ARGS...` with `SRUN` options, marked for the leftover check.
fn direct(srun: &[&str], program: &str, args: &[&str]) -> Outcome {
    let mark = format!("slurm-{}-{}", std::process::id(), rand_suffix());
    let mut cmd = Command::new("srun");
    cmd.arg("--mpi=pmi2")
        .args(srun)
        .env("RANKS_TEST_MARK", &mark)
        .arg(bin(program))
        .args(args);
    run_command(cmd, LIMIT, mark)
}

/// Direct launch: no `ranks run`; rank and size come from Slurm's PMI-2, the ranks of the node
/// meet in a segment that is gone once they all mapped it.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn srun_starts_ranks_directly_within_a_node() {
    slurm_ready();
    let _alone = alone();
    let o = direct(&["-p", "main", "-n", "4"], "primes", &[]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("total: 283146 primes"), "{o:?}");
    assert_nothing_left(&o);
    let o = direct(
        &["-p", "main", "-n", "3"],
        "ranks-testjob",
        &["ring", "500"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("ring ok 1500"), "{o:?}");
    assert_nothing_left(&o);
}

/// With no launcher to tell them, survivors notice a dead rank's process is gone: their
/// all-reduce fails naming a dead rank, and srun reports the victim's end.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn a_rank_killed_under_srun_ends_the_others_waits() {
    slurm_ready();
    let _alone = alone();
    for (how, code) in [("kill", 137), ("exit3", 3)] {
        let o = direct(
            &["-p", "main", "-n", "4"],
            "ranks-testjob",
            &["dies", "allreduce", how],
        );
        assert_eq!(o.code, code, "{how}: {o:?}");
        for r in 1..3 {
            let l = format!("survivor {r} allreduce: PeerLost rank 3 ");
            assert!(o.stdout.contains(&l), "{how}: {l}: {o:?}");
        }
        assert!(o.stdout.contains("survivor 0 allreduce: PeerLost"), "{o:?}");
        assert_nothing_left(&o);
    }
}

/// Direct launch across nodes: shared memory within each node, QUIC between them, each rank
/// with a certificate of its own whose fingerprint the others take from PMI.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn srun_starts_ranks_directly_across_nodes() {
    slurm_ready();
    let _alone = alone();
    let o = direct(
        &["-p", "hosts", "-w", "ranks-h[1-2]", "--ntasks-per-node=2"],
        "ranks-testjob",
        &["where"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_two_per_node(&o);
    assert_nothing_left(&o);
    // One rank on one node, two on another, three on a third.
    let o = direct(
        &[
            "-p",
            "hosts",
            "-w",
            "ranks-h[1-3]",
            "-n",
            "6",
            "-m",
            "block",
        ],
        "ranks-testjob",
        &["ring", "300"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("ring ok 1800"), "{o:?}");
    assert_nothing_left(&o);
    // Shared numbers under srun: ranks on the owner's node map them (they agree on the
    // file's name without a launcher), the others go through the owner.
    let o = direct(
        &["-p", "hosts", "-w", "ranks-h[1-2]", "--ntasks-per-node=2"],
        "ranks-testprim",
        &["counter", "2000", "100"],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("counter ok 8000 400"), "{o:?}");
    assert_nothing_left(&o);
    let o = direct(
        &["-p", "hosts", "-w", "ranks-h[1-3]", "-n", "6"],
        "primes",
        &[],
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("total: 283146 primes"), "{o:?}");
    assert_nothing_left(&o);
}

/// Across nodes under srun: a SIGKILLed rank ends the waits of the ranks on the other node
/// (QUIC) and on its own (shared memory); `abort` ends the step through PMI at once, even
/// for ranks blocked forever.
#[test]
#[ignore = "needs Slurm (sudo bash .ci/netns-hosts.sh up 4 && sudo bash .ci/slurm.sh up); run with -- --include-ignored"]
fn failures_under_srun_across_nodes_end_every_wait() {
    slurm_ready();
    let _alone = alone();
    let two_nodes = ["-p", "hosts", "-w", "ranks-h[1-2]", "--ntasks-per-node=2"];
    let o = direct(&two_nodes, "ranks-testjob", &["dies", "allreduce", "kill"]);
    assert_eq!(o.code, 137, "{o:?}");
    for r in 0..3 {
        let l = format!("survivor {r} allreduce: PeerLost rank ");
        assert!(o.stdout.contains(&l), "{l}: {o:?}");
    }
    assert!(o.elapsed < Duration::from_secs(20), "{o:?}");
    assert_nothing_left(&o);
    // With --kill-on-bad-exit=1, Slurm ends the step at the death.
    let mut kill_bad = two_nodes.to_vec();
    kill_bad.push("--kill-on-bad-exit=1");
    let o = direct(&kill_bad, "ranks-testjob", &["dies", "allreduce", "kill"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("task 3: Killed"), "{o:?}");
    assert_nothing_left(&o);

    // A rank that cannot join (here: told to bind another node's address) ends the step
    // through PMI instead of leaving the others in a fence forever.
    let mut bad_bind = two_nodes.to_vec();
    bad_bind.push("--export=ALL,RANKS_BIND=10.77.0.11");
    let o = direct(&bad_bind, "ranks-testjob", &["ring", "10"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("binding a QUIC endpoint"), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(20), "{o:?}");
    assert_nothing_left(&o);

    // Rank 1 aborts while the others are busy for a minute, calling nothing of ranks.
    let o = direct(&two_nodes, "ranks-testjob", &["abort", "1", "idle"]);
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("ranks: rank 1 called abort(7)"), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(20), "{o:?}");
    assert_nothing_left(&o);
}
