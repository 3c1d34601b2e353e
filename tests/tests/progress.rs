//! MPI's progress rule through real jobs: a rank blocked in one call (a blocking send) still
//! advances its other pending operations (posted receives of rendezvous messages), so the
//! textbook patterns finish on every transport, at the default rendezvous threshold and with
//! every message a rendezvous (`RANKS_RENDEZVOUS_THRESHOLD=1`).

use std::time::Duration;

use ranks_tests::*;

/// A hang here is the bug: the launcher's own timeout ends it well before the test's limit.
fn pattern(scenario: &str, args: &[&str]) {
    pattern_with(scenario, args, &["shm", "uds", "quic"], &[None, Some("1")]);
}

fn pattern_with(scenario: &str, args: &[&str], transports: &[&str], thresholds: &[Option<&str>]) {
    for &transport in transports {
        for &threshold in thresholds {
            for n in [2, 3, 5] {
                let np = n.to_string();
                let mut launcher = vec!["-n", &np, "--transport", transport, "--timeout", "60"];
                let var;
                if let Some(t) = threshold {
                    var = format!("RANKS_RENDEZVOUS_THRESHOLD={t}");
                    launcher.extend(["-x", &var]);
                }
                let mut prog = vec![scenario];
                prog.extend(args);
                let o = run_job(&launcher, "ranks-testjob", &prog, Duration::from_secs(90));
                let what =
                    format!("{scenario} on {n} ranks over {transport}, threshold {threshold:?}");
                assert_eq!(o.code, 0, "{what}: {o:?}");
                for r in 0..n {
                    let line = format!("{scenario} ok rank {r}");
                    assert!(o.stdout.contains(&line), "{what}: no {line:?} in {o:?}");
                }
                assert_clean(&o);
            }
        }
    }
}

/// What each of the job's first `n` ranks printed as `landed RANK COUNT` (receives that
/// took their message straight from the stream).
fn landed_counts(o: &Outcome, n: usize) -> Vec<u64> {
    (0..n)
        .map(|r| {
            o.stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("landed {r} ")))
                .unwrap_or_else(|| panic!("no landed line for rank {r}: {o:?}"))
                .trim()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn halo_exchange_with_blocking_rendezvous_sends() {
    pattern("halo", &[]);
}

#[test]
fn posted_large_receives_completed_out_of_order() {
    pattern("posted_large", &[]);
}

#[test]
fn posted_receives_take_messages_in_posting_order_whatever_the_wait_order() {
    // 4 elements: eager by default (taken straight from the stream by the waiting
    // receive), a rendezvous with threshold 1; 16384 elements (64 KiB): a rendezvous.
    pattern("posted_order", &[]);
    pattern("posted_order", &["16384"]);
}

/// With every message eager, a receive waiting for its message to be all in the ring takes
/// it from there only when the ring can hold it: a 1 MiB frame never fits a 1 MiB ring, and
/// waiting for it to be whole would hang.
#[test]
fn eager_messages_larger_than_the_rings_and_as_large_as_they_allow() {
    let all_eager = [Some("4000000000")];
    // 1 MiB messages, posted receives (halo); into posted receives waited for out of
    // order: 16384 u32 (64 KiB), 262000 u32 (a frame just under the ring's 1 MiB) and
    // 300000 u32 (a frame larger than the ring).
    pattern_with("halo", &[], &["shm"], &all_eager);
    for len in ["16384", "262000", "300000"] {
        pattern_with("posted_order", &[len], &["shm"], &all_eager);
    }
    for len in ["16384", "262000", "300000"] {
        pattern_with("land_wait", &[len], &["shm"], &all_eager);
    }
}

/// A window of posted receives of one tag, waited for with `wait_all` once its messages
/// are in the stream, takes them straight from it (in runs over shared memory and QUIC:
/// one look at the ring's words, or one lock of the inbox, for a run; the unit tests count
/// the runs), and a frame of another tag between them still reaches its own receive
/// (testjob `land_window`: 64
/// messages of 1 to 4 u32 and one of another tag in the middle, every value and length
/// checked). Every transport gets every message right on 2, 3 and 5 ranks; over shm a run
/// must show a rank that landed at least the half of the window before the other tag's
/// frame (up to five runs: a rank still in the barrier when its messages come reads them
/// into the queues instead).
#[test]
fn a_window_of_one_tag_lands_from_the_stream_in_runs() {
    pattern_with("land_window", &[], &["shm", "uds", "quic"], &[None]);
    let mut seen = Vec::new();
    for _ in 0..5 {
        let l = ["-n", "2", "--transport", "shm", "--timeout", "60"];
        let o = run_job(
            &l,
            "ranks-testjob",
            &["land_window"],
            Duration::from_secs(90),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert_clean(&o);
        let landed = landed_counts(&o, 2);
        seen.push(landed.clone());
        if landed.iter().any(|&l| l >= 32) {
            return;
        }
    }
    panic!("receives landed in each run: {seen:?}");
}

/// Over QUIC, whose streams do not wait for a large frame to be whole, a posted receive
/// its thread waits for (`wait`, `wait_all`) reads its message straight into its buffer as
/// the parts arrive, as a blocking receive does, rather than through a buffer of the
/// decoder's that it copies afterwards (testjob `land_parts`: four 4 MiB messages). Every
/// transport gets every value right on 2, 3 and 5 ranks.
///
/// Whether a receive lands depends on timing (a rank still in the barrier when the first
/// message starts reads it into the queues, through the barrier's progress, and the
/// frames behind it may follow that way), so the QUIC case runs up to five times and
/// passes once rank 0 landed three of its four receives; before, none landed unless its
/// message was all there before its wait began, which does not happen here (each message
/// takes milliseconds to arrive and the sender makes the next one after sending).
#[test]
fn waited_receives_land_large_messages_in_parts_over_quic() {
    pattern_with("land_parts", &[], &["shm", "uds", "quic"], &[None]);
    let l = ["-n", "2", "--transport", "quic", "--timeout", "60"];
    let mut seen = Vec::new();
    for _ in 0..5 {
        let o = run_job(
            &l,
            "ranks-testjob",
            &["land_parts"],
            Duration::from_secs(90),
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert_clean(&o);
        let landed = landed_counts(&o, 1)[0];
        seen.push(landed);
        if landed >= 3 {
            break;
        }
    }
    assert!(
        seen.iter().any(|&l| l >= 3),
        "receives landed in each run: {seen:?}"
    );
}

/// The rendezvous messages of receives one thread waits on or tests as a set (`wait_all`,
/// `wait_any`, `wait_some`, `test_any`, `test_some`) go straight into their own buffers,
/// pulled by that thread, even when the set cannot finish without such a pull (testjob
/// `own_pulls`).
#[test]
fn a_set_of_receives_pulls_its_own_messages_while_it_waits() {
    pattern("own_pulls", &[]);
}

#[test]
fn head_to_head_large_sends_into_a_posted_wildcard_receive() {
    pattern("head_to_head", &[]);
}

#[test]
fn small_halo_where_every_message_is_eager_or_threshold_one() {
    // 16 u64s: eager by default, a rendezvous with threshold 1.
    pattern("halo", &["16", "50"]);
}

#[test]
fn eight_threads_create_communicators_at_once() {
    for transport in ["shm", "uds", "quic"] {
        for n in [2, 3, 4] {
            let np = n.to_string();
            let o = run_job(
                &["-n", &np, "--transport", transport, "--timeout", "60"],
                "ranks-testjob",
                &["dup_threads"],
                Duration::from_secs(90),
            );
            assert_eq!(o.code, 0, "{n} ranks over {transport}: {o:?}");
            for r in 0..n {
                assert!(
                    o.stdout.contains(&format!("dup_threads ok rank {r}")),
                    "{o:?}"
                );
            }
            assert_clean(&o);
        }
    }
}

/// Threads of one rank share its core's lock: four per rank stream to the next rank on one
/// communicator, with the lock in both forms (released by a plain store, with waiters that
/// call `membarrier` before they sleep; and fenced, `RANKS_TEST_FENCED_LOCK=1`). A lost
/// wakeup on the lock leaves a thread asleep for good, and the job fails at its timeout.
#[test]
fn threads_of_a_rank_share_its_lock_in_both_forms() {
    for fenced in ["0", "1"] {
        for (transport, n) in [("shm", 2), ("shm", 3), ("uds", 2)] {
            let np = n.to_string();
            let o = run_job(
                &[
                    "-n",
                    &np,
                    "--transport",
                    transport,
                    "--timeout",
                    "120",
                    "-x",
                    &format!("RANKS_TEST_FENCED_LOCK={fenced}"),
                ],
                "ranks-testjob",
                &["threads_share_the_core", "3000"],
                Duration::from_secs(150),
            );
            assert_eq!(
                o.code, 0,
                "{n} ranks over {transport}, fenced {fenced}: {o:?}"
            );
            for r in 0..n {
                assert!(
                    o.stdout
                        .contains(&format!("threads_share_the_core ok rank {r}")),
                    "{o:?}"
                );
            }
            assert_clean(&o);
        }
    }
}

/// The counts a `shared_pull` job's rank printed: (written by its senders, pulled back,
/// written for its receivers).
fn shared_counts(out: &str, rank: usize) -> (u64, u64, u64) {
    let prefix = format!("shared_pull ok rank {rank} ");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line in {out}"));
    let num = |key: &str| -> u64 {
        let at = line.find(key).expect(key) + key.len() + 1;
        line[at..].split(' ').next().unwrap().parse().unwrap()
    };
    (
        num("written_by_peer"),
        num("pulled_back"),
        num("written_for_peer"),
    )
}

/// Large pulls over shared memory are shared with the sender: it writes the second half
/// straight into the receiver's buffer when it is in the library to see the offer (here
/// made certain by `RANKS_TEST_AWAIT_PUSH=1`, which makes receivers wait for it), and a
/// sender that is busy elsewhere leaves every byte to the receiver, which then takes its
/// offer back instead of waiting. Every message (256 KiB to 4 MiB), received every way,
/// arrives whole; over uds (no shared pulls) the same job counts none.
#[test]
fn large_pulls_are_shared_with_senders_in_the_library_and_not_waited_for_otherwise() {
    const ROUNDS: u64 = 8;
    // A `shared_pull` job that must succeed and leave nothing behind.
    let job = |launcher: &[&str], args: &[&str], what: &str| {
        let o = run_job(launcher, "ranks-testjob", args, Duration::from_secs(90));
        assert_eq!(o.code, 0, "{what}: {o:?}");
        assert_clean(&o);
        o
    };
    for n in [2usize, 3, 5] {
        let np = n.to_string();
        let base = ["-n", &np, "--transport", "shm", "--timeout", "60"];
        let what = format!("{n} ranks");
        // Every half written by the sender.
        let mut l = base.to_vec();
        l.extend(["-x", "RANKS_TEST_AWAIT_PUSH=1"]);
        let o = job(&l, &["shared_pull", "waiting"], &format!("waiting, {what}"));
        for r in 0..n {
            assert_eq!(
                shared_counts(&o.stdout, r),
                (ROUNDS, 0, ROUNDS),
                "waiting, {what}, rank {r}: {o:?}"
            );
        }
        // Without the knob: whichever way each went, every message is whole and counted once.
        let o = job(
            &base,
            &["shared_pull", "waiting"],
            &format!("waiting, no knob, {what}"),
        );
        for r in 0..n {
            let (by_peer, back, _) = shared_counts(&o.stdout, r);
            assert_eq!(by_peer + back, ROUNDS, "{what}, rank {r}: {o:?}");
        }
        // Senders out of the library: every byte pulled by the receivers.
        // Not named `ranks-...` (the job tests look for leftovers by that name).
        let dir = std::env::temp_dir().join(format!("shared-pull-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let o = job(
            &base,
            &["shared_pull", "busy", dir.to_str().unwrap()],
            &format!("busy, {what}"),
        );
        let _ = std::fs::remove_dir_all(&dir);
        for r in 0..n {
            let want = match r % 2 {
                1 => (0, ROUNDS, 0),
                _ => (0, 0, 0),
            };
            assert_eq!(
                shared_counts(&o.stdout, r),
                want,
                "busy, {what}, rank {r}: {o:?}"
            );
        }
    }
    // No shared pulls over uds, nor with RANKS_SHARE_PULL=0.
    for extra in [
        &["--transport", "uds"][..],
        &["--transport", "shm", "-x", "RANKS_SHARE_PULL=0"][..],
    ] {
        let mut l = vec!["-n", "3", "--timeout", "60"];
        l.extend(extra);
        let o = job(&l, &["shared_pull", "waiting"], &format!("{extra:?}"));
        for r in 0..3 {
            assert_eq!(shared_counts(&o.stdout, r), (0, 0, 0), "{extra:?}: {o:?}");
        }
    }
}

/// Posted receives finished by `test` polling, `wait_any`, `wait_some`, `test_some` and
/// `wait_all` take their small messages straight from the shared-memory stream, as `wait` does
/// (2 and 3 ranks; every payload checked by the job); over uds, where no stream can be read
/// in place, the same job lands none and still gets every message.
///
/// Whether a message lands depends on timing: a rank still in the barrier (or descheduled
/// there, when other jobs share the cores) when its sender starts reads the messages into
/// the queues, through the barrier wait's progress, and so may every rank of a run. So each
/// shm case runs up to five times and passes once a run shows a rank that landed at least
/// half of its receives; every run must get every message right.
#[test]
fn tests_and_request_sets_land_small_messages_from_the_stream() {
    for (n, transport) in [(2usize, "shm"), (3, "shm"), (2, "uds")] {
        let np = n.to_string();
        let l = ["-n", &np, "--transport", transport, "--timeout", "60"];
        let mut seen = Vec::new();
        for _ in 0..5 {
            let o = run_job(&l, "ranks-testjob", &["land_sets"], Duration::from_secs(90));
            assert_eq!(o.code, 0, "{n} ranks over {transport}: {o:?}");
            assert_clean(&o);
            let landed = landed_counts(&o, n);
            if transport != "shm" {
                assert_eq!(landed, vec![0; n], "over {transport}: {o:?}");
                break;
            }
            let most = *landed.iter().max().unwrap();
            seen.push(landed);
            if most >= 100 {
                break;
            }
        }
        if transport == "shm" {
            assert!(
                seen.last().unwrap().iter().max().unwrap() >= &100,
                "{n} ranks: no run landed half of a rank's 200 receives: {seen:?}"
            );
        }
    }
}

/// A program that polls with `test` or `iprobe` while its ranks outnumber the cores gives
/// the core away at each fruitless look, so the rank it waits for gets to run (a halo
/// exchange finished by polling took 1 ms an iteration on 3 ranks on 2 cores, 280 times a
/// waiting one); ranks that have a core each keep polling without yielding.
#[test]
fn polling_looks_give_the_core_away_only_when_ranks_outnumber_cores() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cases = vec![(cores + 1, true)];
    if cores >= 2 {
        cases.push((2, false));
    }
    for (n, over) in cases {
        let np = n.to_string();
        let l = ["-n", &np, "--transport", "shm", "--timeout", "60"];
        let o = run_job(
            &l,
            "ranks-testjob",
            &["poll_halo", "300"],
            Duration::from_secs(90),
        );
        assert_eq!(o.code, 0, "{n} ranks: {o:?}");
        assert_clean(&o);
        for r in 0..n {
            let idle: u64 = o
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("idle {r} ")))
                .unwrap_or_else(|| panic!("no idle line for rank {r}: {o:?}"))
                .trim()
                .parse()
                .unwrap();
            if over {
                assert!(
                    idle > 0,
                    "rank {r} of {n} on {cores} cores never yielded: {o:?}"
                );
            } else {
                assert_eq!(idle, 0, "rank {r} of {n} on {cores} cores yielded: {o:?}");
            }
        }
    }
}

/// Receivers that go to sleep at every moment of their sender's write are woken by it,
/// both when sleepers pay for the doorbell with a `membarrier` and writers skip their fence
/// (ranks that spin first) and when writers fence (ranks that do not spin). Naps are made
/// ten minutes long, so a lost wakeup hangs the job (the launcher's timeout ends it) rather
/// than costing a 50 ms nap; 4000 round trips each, every value checked.
#[test]
fn sleeping_receivers_are_woken_by_every_write() {
    for spin_us in ["1", "0"] {
        let spin = format!("RANKS_SPIN_US={spin_us}");
        let l = [
            "-n",
            "2",
            "--timeout",
            "60",
            "-x",
            &spin,
            "-x",
            "RANKS_YIELDS=0",
            "-x",
            "RANKS_TEST_NAP_MS=600000",
        ];
        let o = run_job(
            &l,
            "ranks-testjob",
            &["sleepy_pingpong", "4000"],
            Duration::from_secs(90),
        );
        assert_eq!(o.code, 0, "spin {spin_us} us: {o:?}");
        assert_clean(&o);
    }
}
