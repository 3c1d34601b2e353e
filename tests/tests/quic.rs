//! The QUIC transport on one host (`--transport quic`): the same jobs as over shared memory,
//! and connections from outside the job refused.

use ranks_tests::*;

fn quic_job(n: usize, program: &str, args: &[&str], expect: &str) {
    let np = n.to_string();
    let o = run_job(&["-n", &np, "--transport", "quic"], program, args, LIMIT);
    assert_eq!(o.code, 0, "{program} {args:?}: {o:?}");
    assert!(
        o.stdout.contains(expect),
        "{program} {args:?}: expected {expect:?} in {o:?}"
    );
    assert_clean(&o);
}

/// A job that uses QUIC gives its ranks glibc's allocator settings that keep freed memory
/// (README: quinn's receive buffers made the heap shrink and grow at every burst), after
/// tunables of the user's own; a user who chose allocator settings keeps theirs; a job
/// over shared memory gets none.
#[test]
fn quic_jobs_keep_freed_memory_unless_the_user_chose_otherwise() {
    let values = |launcher: &[&str]| -> Vec<String> {
        let o = run_job(
            launcher,
            "ranks-testjob",
            &["getenv", "GLIBC_TUNABLES"],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{launcher:?}: {o:?}");
        assert_clean(&o);
        let mut v: Vec<String> = o
            .stdout
            .lines()
            .filter_map(|l| l.strip_prefix("getenv "))
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let ours = "glibc.malloc.trim_threshold=67108864:glibc.malloc.top_pad=4194304:\
                glibc.malloc.mmap_threshold=33554432";
    assert_eq!(
        values(&["-n", "2", "--transport", "quic"]),
        [format!("0 {ours}"), format!("1 {ours}")]
    );
    assert_eq!(
        values(&[
            "-n",
            "1",
            "--transport",
            "quic",
            "-x",
            "GLIBC_TUNABLES=glibc.pthread.rseq=0"
        ]),
        [format!("0 glibc.pthread.rseq=0:{ours}")]
    );
    let own = "GLIBC_TUNABLES=glibc.malloc.arena_max=2";
    assert_eq!(
        values(&["-n", "1", "--transport", "quic", "-x", own]),
        ["0 glibc.malloc.arena_max=2"]
    );
    assert_eq!(
        values(&["-n", "1", "--transport", "quic", "-x", "MALLOC_TOP_PAD_=0"]),
        ["0 <unset>"]
    );
    assert_eq!(
        values(&["-n", "2", "--transport", "shm"]),
        ["0 <unset>", "1 <unset>"]
    );
}

/// Over QUIC the frames of small nonblocking sends are held back until the sender's next
/// wait (so a window of them leaves in a few packets): a send waited for leaves then, and
/// one not waited for leaves at the transport's next turn, while its sender sleeps
/// outside the library (testjob `held_isend`; between two hosts in `hosts.rs`).
#[test]
fn held_back_sends_leave_while_their_sender_stays_away() {
    quic_job(2, "ranks-testjob", &["held_isend"], "held_isend ok rank 0");
}

#[test]
fn point_to_point_over_quic() {
    quic_job(2, "ranks-testjob", &["order", "20000"], "order ok 20000");
    quic_job(4, "ranks-testjob", &["fanin", "2000"], "fanin ok 6000");
    quic_job(2, "ranks-testjob", &["sizes"], "sizes ok");
    quic_job(3, "ranks-testjob", &["wildcard"], "wildcard ok");
    quic_job(
        3,
        "ranks-testjob",
        &["nonblocking"],
        "nonblocking ok rank 2",
    );
    quic_job(2, "ranks-testjob", &["peerlost"], "peerlost ok");
}

#[test]
fn collectives_and_primitives_over_quic() {
    quic_job(4, "ranks-testcoll", &["small"], "collectives ok on 4 ranks");
    quic_job(
        4,
        "ranks-testprim",
        &["queue", "2000"],
        "queue ok 2000 items",
    );
    quic_job(3, "primes", &[], "total: 283146 primes");
}

/// A rank's own threads drive QUIC while they wait; while it computes, its helper answers
/// the peer (keep-alives, acknowledgements): a rank away for longer than the idle timeout
/// keeps its connections, and what was sent to it meanwhile arrives.
#[test]
fn a_rank_away_longer_than_the_idle_timeout_keeps_its_connections() {
    quic_job(2, "ranks-testjob", &["compute"], "compute ok rank 1");
}

/// The async forms from a tokio program: those threads cannot drive QUIC themselves (a
/// runtime inside a runtime), so the helper drives for them.
#[test]
fn async_forms_over_quic() {
    quic_job(3, "ranks-testjob", &["async"], "async ok rank 2");
}

#[test]
fn connections_without_the_job_credentials_are_refused() {
    let o = run_job(
        &["-n", "2", "--transport", "quic"],
        "ranks-testjob",
        &["forge"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout
            .contains("forged connection (own certificate: true) refused"),
        "{o:?}"
    );
    assert!(
        o.stdout
            .contains("forged connection (own certificate: false) refused"),
        "{o:?}"
    );
    // A certificate signed by another job's CA, as `ranks run` makes them.
    assert!(
        o.stdout
            .contains("forged connection (another job's certificate) refused"),
        "{o:?}"
    );
    assert!(o.stdout.contains("job unaffected"), "{o:?}");
    assert_clean(&o);
}

#[test]
fn a_failing_rank_over_quic_stops_the_job() {
    let o = run_job(
        &["-n", "3", "--transport", "quic"],
        "ranks-testjob",
        &["fail", "exit3", "1"],
        LIMIT,
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert_clean(&o);
}

/// `RANKS_QUIC_WINDOW` caps what a connection keeps in flight: messages of up to 64 MiB
/// each way arrive whole with the least window allowed and with no cap; a window too
/// small to move anything is refused by name before any message moves.
#[test]
fn the_quic_window_is_a_setting() {
    for w in ["65536", "0"] {
        let x = format!("RANKS_QUIC_WINDOW={w}");
        let o = run_job(
            &["-n", "2", "--transport", "quic", "-x", &x],
            "ranks-testjob",
            &["sizes"],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{x}: {o:?}");
        assert!(o.stdout.contains("sizes ok"), "{x}: {o:?}");
        assert_clean(&o);
    }
    let o = run_job(
        &[
            "-n",
            "2",
            "--transport",
            "quic",
            "-x",
            "RANKS_QUIC_WINDOW=1000",
        ],
        "ranks-testjob",
        &["sizes"],
        LIMIT,
    );
    assert_ne!(o.code, 0, "{o:?}");
    assert!(
        o.stderr
            .contains("bootstrap failed: RANKS_QUIC_WINDOW=1000 is below the least window"),
        "{o:?}"
    );
    assert!(
        !o.stderr.contains("bootstrap failed: bootstrap failed"),
        "{o:?}"
    );
    assert_clean(&o);
}
