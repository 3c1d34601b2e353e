//! Queues, pipes, locks, semaphores, conditions, events, barriers, shared state, managers
//! and pools across ranks: real jobs with 2, 4 and 8 ranks (8 on 2 cores).

use ranks_tests::*;

fn prim(n: usize, extra: &[&str], args: &[&str], expect: &str) -> Outcome {
    let np = n.to_string();
    let mut launcher = vec!["-n", np.as_str()];
    launcher.extend_from_slice(extra);
    let o = run_job(&launcher, "ranks-testprim", args, LIMIT);
    assert_eq!(o.code, 0, "{args:?} on {n} ranks: {o:?}");
    assert!(
        o.stdout.contains(expect),
        "{args:?} on {n} ranks: expected {expect:?} in {o:?}"
    );
    assert_clean(&o);
    o
}

#[test]
fn queue_with_seven_producers_and_seven_consumers_moves_100k_items_exactly_once() {
    prim(
        14,
        &[],
        &["queue", "100000"],
        "queue ok 100000 items, 7 producers, 7 consumers",
    );
}

#[test]
fn queue_many_producers_and_consumers_on_2_4_8_ranks() {
    prim(
        2,
        &[],
        &["queue", "20000"],
        "queue ok 20000 items, 1 producers, 1 consumers",
    );
    prim(
        4,
        &[],
        &["queue", "20000"],
        "queue ok 20000 items, 2 producers, 2 consumers",
    );
    prim(
        8,
        &[],
        &["queue", "20000"],
        "queue ok 20000 items, 4 producers, 4 consumers",
    );
    prim(
        4,
        &["--transport", "uds"],
        &["queue", "5000"],
        "queue ok 5000 items",
    );
}

/// An owner that leaves a short call and goes on computing still has its objects served
/// (by its service thread, which a short call does not wake).
#[test]
fn an_owner_that_computes_after_a_short_call_still_serves_requests() {
    prim(2, &[], &["owner_computes"], "owner computes ok");
    prim(3, &[], &["owner_computes"], "owner computes ok");
    prim(
        2,
        &["--transport", "uds"],
        &["owner_computes"],
        "owner computes ok",
    );
}

#[test]
fn queue_blocking_timeouts_full_empty_and_close() {
    prim(2, &[], &["queue_semantics"], "queue semantics ok");
    prim(4, &[], &["queue_semantics"], "queue semantics ok");
}

#[test]
fn counter_of_8_ranks_times_10000_is_exactly_80000() {
    prim(8, &[], &["counter", "10000"], "counter ok 80000 80000");
    prim(2, &[], &["counter", "10000"], "counter ok 20000 20000");
    prim(4, &[], &["counter", "2000"], "counter ok 8000 8000");
}

#[test]
fn locks_semaphores_conditions_events_barriers() {
    for n in [2, 4, 8] {
        prim(n, &[], &["sync"], "sync ok");
    }
}

#[test]
fn a_lock_whose_holder_is_killed_gives_the_next_acquirer_a_clear_error() {
    let o = run_job(
        &["-n", "3", "--keep-going"],
        "ranks-testprim",
        &["lockdies"],
        LIMIT,
    );
    // Rank 1 was killed on purpose: the job reports it.
    assert_eq!(o.code, 137, "{o:?}");
    assert!(
        o.stdout
            .contains("holder died: rank 1 died while holding the lock"),
        "{o:?}"
    );
    assert!(o.stdout.contains("lock recovered"), "{o:?}");
    assert_clean(&o);
}

#[test]
fn pipes_duplex_one_way_and_end_of_stream() {
    prim(2, &[], &["pipes"], "pipes ok");
    prim(4, &[], &["pipes"], "pipes ok");
}

#[test]
fn manager_containers_shared_arrays_and_named_memory() {
    for n in [2, 4, 8] {
        prim(n, &[], &["shared"], "shared state ok");
    }
}

#[test]
fn pool_map_imap_apply_async_callbacks_failures_and_load_balance() {
    prim(1, &[], &["pool"], "pool ok with 0 workers");
    prim(2, &[], &["pool"], "pool ok with 1 workers");
    prim(4, &[], &["pool"], "pool ok with 3 workers");
    prim(8, &[], &["pool"], "pool ok with 7 workers");
}

#[test]
fn a_lock_whose_holder_exits_frees_every_waiter_even_its_owner() {
    // The holder (rank 1) exits with code 0 holding the lock; the owner (rank 0) and rank 2
    // wait to acquire it. Before, the owner's own wait kept its objects from checking on
    // holders, and both waited forever.
    let o = run_job(
        &["-n", "3", "--timeout", "30"],
        "ranks-testprim",
        &["lockexits"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    for r in [0, 2] {
        let line = format!("rank {r}: holder died: rank 1 died while holding the lock");
        assert!(o.stdout.contains(&line), "{line:?} in {o:?}");
    }
    assert_clean(&o);
}

#[test]
fn a_barrier_whose_party_leaves_before_arriving_breaks_for_the_others() {
    for (n, quitter, expect) in [
        (
            3,
            "2",
            "barrier broken: rank 2 is gone and can never arrive",
        ),
        (
            4,
            "3",
            "barrier broken: rank 3 is gone and can never arrive",
        ),
        (3, "0", "barrier owner gone"),
    ] {
        let np = n.to_string();
        let o = run_job(
            &["-n", &np, "--timeout", "30"],
            "ranks-testprim",
            &["barrierexits", quitter],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{o:?}");
        let waiting: Vec<usize> = (0..n).filter(|r| r.to_string() != quitter).collect();
        for r in waiting {
            let line = format!("rank {r}: {expect}");
            assert!(o.stdout.contains(&line), "{line:?} in {o:?}");
        }
        assert_clean(&o);
    }
}

/// A Pool worker SIGKILLed mid-task: that item fails naming it and the worker, on every
/// transport (over QUIC the job board tells the root at once), and the rest completes.
#[test]
fn a_pool_whose_worker_dies_fails_that_item_and_finishes_the_rest() {
    for transport in ["shm", "uds", "quic"] {
        let o = run_job(
            &[
                "-n",
                "3",
                "--transport",
                transport,
                "--keep-going",
                "--timeout",
                "20",
            ],
            "ranks-testprim",
            &["poolworkerdies"],
            LIMIT,
        );
        assert_eq!(o.code, 137, "{transport}: {o:?}");
        let line = o
            .lines_with("pool item 5 failed on rank ")
            .first()
            .map(|l| l.to_string())
            .unwrap_or_else(|| panic!("{transport}: no failure line: {o:?}"));
        assert!(
            line.contains("the worker is gone (it was killed by signal 9)"),
            "{line}"
        );
        assert!(
            o.stdout.contains("pool worker death ok"),
            "{transport}: {o:?}"
        );
        assert_clean(&o);
    }
}

/// `--progress always` with stderr not a terminal: plain lines at every tenth, never the
/// ranks' own progress lines; `auto` (not a terminal here) and `never`: nothing.
#[test]
fn pool_progress_is_shown_on_request() {
    let o = run_job(
        &["-n", "3", "--progress", "always"],
        "ranks-testprim",
        &["poolprogress"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("pool progress ok"), "{o:?}");
    let map: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| l.starts_with("ranks: rank 0 Pool.map: "))
        .collect();
    assert!(map.len() >= 2, "a line at several tenths: {o:?}");
    assert_eq!(
        map.last().copied(),
        Some("ranks: rank 0 Pool.map: 60/60 (100%)")
    );
    assert!(
        o.stderr.contains("ranks: rank 0 Pool.imap: 10/10 (100%)"),
        "{o:?}"
    );
    assert!(
        !o.stderr.contains(" progress "),
        "raw progress lines leaked: {o:?}"
    );
    assert_clean(&o);
    for mode in ["auto", "never"] {
        let o = run_job(
            &["-n", "3", "--progress", mode],
            "ranks-testprim",
            &["poolprogress"],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(!o.stderr.contains("Pool.map"), "{mode}: {o:?}");
    }
}

/// A program that makes shared numbers without the launcher (a world of one) leaves no file
/// in /dev/shm: the block's file goes once it is mapped (the owner's service kept it alive,
/// and so the file, until the process ended).
#[test]
fn shared_numbers_leave_no_file_behind() {
    let out = std::process::Command::new(bin("lesson18_counter"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let left: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("-single-shared-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
