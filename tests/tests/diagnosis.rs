//! Hang diagnosis through real jobs: at `--timeout`, on SIGUSR1 and on Ctrl-C the launcher
//! prints what every rank is blocked in, the wait-for cycles and collective mismatches.

use std::process::Command;
use std::time::Duration;

use ranks_tests::*;

fn stuck(transport: &str, kind: &str) -> Outcome {
    let o = run_job(
        &["-n", "4", "--transport", transport, "--timeout", "2"],
        "ranks-testjob",
        &["stuck", kind],
        LIMIT,
    );
    assert_eq!(o.code, 124, "{kind} over {transport}: {o:?}");
    assert_clean(&o);
    o
}

fn has(o: &Outcome, line: &str) {
    assert!(
        o.stderr.lines().any(|l| l.contains(line)),
        "expected a line with {line:?} in {o:?}"
    );
}

#[test]
fn a_receive_deadlock_is_named_at_the_timeout() {
    for t in ["shm", "uds", "quic"] {
        let o = stuck(t, "recv");
        has(&o, "ranks: what each rank is doing:");
        has(&o, "rank 0: blocked in recv(from 1, tag 5) for ");
        has(&o, "rank 1: blocked in recv(from 0, tag 7) for ");
        has(&o, "rank 2: blocked in barrier #0 on world");
        has(
            &o,
            "ranks: deadlock: rank 0 recv(from 1, tag 5) -> rank 1 recv(from 0, tag 7) -> rank 0",
        );
    }
}

#[test]
fn collectives_called_in_a_different_order_are_a_mismatch() {
    for t in ["shm", "quic"] {
        let o = stuck(t, "mismatch");
        has(&o, "rank 1: blocked in all_reduce_slice #0 on world");
        has(&o, "rank 0: blocked in barrier #0 on world");
        has(
            &o,
            "ranks: collective mismatch on world: rank(s) 1, 3 in all_reduce_slice (#0) while rank(s) 0, 2 in barrier (#0)",
        );
    }
}

/// The wait of a nonblocking collective is noted as the collective itself.
#[test]
fn nonblocking_collectives_in_a_different_order_are_a_mismatch() {
    let o = stuck("shm", "imismatch");
    has(&o, "rank 0: blocked in ibarrier #0 on world");
    has(&o, "rank 1: blocked in iall_reduce #0 on world");
    has(
        &o,
        "ranks: collective mismatch on world: rank(s) 1, 3 in iall_reduce (#0) while rank(s) 0, 2 in ibarrier (#0)",
    );
}

#[test]
fn a_lock_wait_names_the_owner_and_the_cycle() {
    let o = stuck("shm", "lock");
    has(&o, "rank 1: blocked in Lock.acquire (owned by rank 0)");
    has(
        &o,
        "ranks: deadlock: rank 0 recv(from 1, tag 3) -> rank 1 recv(from 0) -> rank 0",
    );
}

/// SIGUSR1 prints the table and the job goes on (to its timeout, which prints it again);
/// Ctrl-C prints it too, then stops the job.
#[test]
fn sigusr1_and_ctrl_c_print_the_table() {
    for (sig, code, tables) in [("-USR1", 124, 2), ("-INT", 130, 1)] {
        let mark = format!("diag-{}-{sig}", std::process::id());
        let mut cmd = Command::new(bin("ranks"));
        cmd.args(["run", "-n", "3", "--timeout", "4"])
            .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
            .arg(bin("ranks-testjob"))
            .args(["stuck", "recv"])
            .env("RANKS_TEST_MARK", &mark);
        let killer = {
            let mark = mark.clone();
            std::thread::spawn(move || {
                for _ in 0..1000 {
                    if processes_with_mark(&mark).len() >= 4 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // Let the ranks block first.
                std::thread::sleep(Duration::from_millis(800));
                let launcher = launcher_of(&mark);
                if let Some(p) = launcher {
                    let _ = Command::new("kill").args([sig, &p.to_string()]).status();
                }
            })
        };
        let o = run_command(cmd, LIMIT, mark);
        killer.join().unwrap();
        assert_eq!(o.code, code, "{sig}: {o:?}");
        let n = o.stderr.matches("ranks: what each rank is doing:").count();
        assert_eq!(n, tables, "{sig}: {o:?}");
        has(&o, "ranks: deadlock: rank 0 recv(from 1, tag 5)");
        assert_clean(&o);
    }
}
