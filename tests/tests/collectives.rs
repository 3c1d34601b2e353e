//! Every collective against a sequential reference, for 1 to 9 ranks (8 and 9 on 2 cores).

use ranks_tests::*;

fn coll(n: usize, extra: &[&str], args: &[&str]) {
    let np = n.to_string();
    let mut launcher = vec!["-n", np.as_str()];
    launcher.extend_from_slice(extra);
    let o = run_job(&launcher, "ranks-testcoll", args, LIMIT);
    assert_eq!(o.code, 0, "{n} ranks {extra:?}: {o:?}");
    assert!(
        o.stdout.contains(&format!("collectives ok on {n} ranks")),
        "{o:?}"
    );
    assert_clean(&o);
}

#[test]
fn collectives_on_1_to_3_ranks() {
    for n in 1..=3 {
        coll(n, &[], &[]);
    }
}

#[test]
fn collectives_on_4_to_6_ranks() {
    for n in 4..=6 {
        coll(n, &[], &[]);
    }
}

#[test]
fn collectives_on_7_to_9_ranks() {
    for n in 7..=9 {
        coll(n, &[], &[]);
    }
}

#[test]
fn large_message_algorithms_on_small_messages() {
    // Force the ring all-reduce and scatter+all-gather broadcast for every size.
    for n in [3, 5, 8] {
        coll(
            n,
            &["-x", "RANKS_ALLREDUCE_LARGE=1", "-x", "RANKS_BCAST_LARGE=1"],
            &["small"],
        );
    }
}

#[test]
fn collectives_over_unix_sockets() {
    coll(5, &["--transport", "uds"], &["small"]);
}

#[test]
fn collectives_when_the_kernel_refuses_to_pull() {
    coll(4, &["-x", "RANKS_TEST_REFUSE_PULL=1"], &[]);
}

/// Two-level collectives (each host's ranks meet at their leader, leaders talk across):
/// hosts simulated on one machine with `RANKS_TEST_HOSTS`, every collective against its
/// reference, for uneven hosts, interleaved ranks, a lone rank, and roots that are not
/// leaders (testcoll uses every root).
#[test]
fn two_level_collectives_on_simulated_hosts() {
    for hosts in [
        "0,0,1,1",
        "0,1,0,1,1",
        "2,2,2,0,1,1",
        "0,0,1,1,1,2,2,3",
        "1,0,0",
    ] {
        let n = hosts.split(',').count();
        let var = format!("RANKS_TEST_HOSTS={hosts}");
        coll(n, &["-x", &var], &[]);
        coll(n, &["-x", &var], &["large"]);
    }
}

/// Who talked to whom in a job of barriers on 4 ranks, from its trace.
fn pairs(extra: &[&str]) -> Vec<(usize, usize)> {
    pairs_of(extra, &["barrier", "100"])
}

/// Who talked to whom in a job of `bench ARGS` on 4 ranks, from its trace.
fn pairs_of(extra: &[&str], args: &[&str]) -> Vec<(usize, usize)> {
    static JOBS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let trace = std::env::temp_dir().join(format!(
        "ranks-test-pairs-{}-{}.json",
        std::process::id(),
        JOBS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let t = trace.display().to_string();
    let mut launcher = vec!["--trace", t.as_str(), "-n", "4"];
    launcher.extend_from_slice(extra);
    let o = run_job(&launcher, "bench", args, LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    let report = std::process::Command::new(bin("ranks"))
        .args(["report", &t, "--svg", "/dev/null"])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&trace);
    let text = String::from_utf8_lossy(&report.stdout).to_string();
    let mut out: Vec<(usize, usize)> = text
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() > 3 && w[1] == "->" {
                Some((w[0].parse().ok()?, w[2].parse().ok()?))
            } else {
                None
            }
        })
        .collect();
    out.sort();
    out
}

/// With ranks 0,1 on one host and 2,3 on another, only the leaders (0 and 2) talk across
/// hosts; `RANKS_COLL_HIER=0` gives the flat algorithms, whose pairs cross freely (with
/// `RANKS_COLL_SHM=0`: the ranks really share one segment, where barriers meet without
/// messages).
#[test]
fn only_leaders_talk_across_hosts() {
    let two = pairs(&["-x", "RANKS_TEST_HOSTS=0,0,1,1"]);
    let across: Vec<_> = two.iter().filter(|(a, b)| (a / 2) != (b / 2)).collect();
    assert_eq!(across, [&(0, 2), &(2, 0)], "{two:?}");
    // Within a "host" the ranks share the segment and check in there: the leaders' are
    // the only messages. By messages, each member talks to its leader.
    assert_eq!(two, [(0, 2), (2, 0)], "{two:?}");
    let by_messages = pairs(&["-x", "RANKS_TEST_HOSTS=0,0,1,1", "-x", "RANKS_COLL_SHM=0"]);
    assert!(
        by_messages.contains(&(1, 0)) && by_messages.contains(&(0, 1)),
        "{by_messages:?}"
    );
    let flat = pairs(&[
        "-x",
        "RANKS_TEST_HOSTS=0,0,1,1",
        "-x",
        "RANKS_COLL_HIER=0",
        "-x",
        "RANKS_COLL_SHM=0",
    ]);
    assert!(
        flat.iter().any(|&(a, b)| (a / 2) != (b / 2) && a % 2 == 1),
        "{flat:?}"
    );
}

/// Ranks that share a segment meet in it for barriers: a job of barriers sends no message
/// at all (`crate::host_sync`), on shared memory and on the hybrid transport; by messages
/// (dissemination) with `RANKS_COLL_SHM=0` or where there is no shared segment (uds).
#[test]
fn barriers_of_one_hosts_ranks_send_no_messages() {
    for transport in ["shm", "auto"] {
        let pairs = pairs(&["--transport", transport]);
        assert!(pairs.is_empty(), "{transport}: {pairs:?}");
    }
    let by_messages = pairs(&["--transport", "shm", "-x", "RANKS_COLL_SHM=0"]);
    assert!(by_messages.contains(&(0, 1)), "{by_messages:?}");
    let uds = pairs(&["--transport", "uds"]);
    assert!(uds.contains(&(0, 1)), "{uds:?}");
}

/// All-reductions on the world of up to a sync buffer (256 bytes) meet in the segment too:
/// no message; larger ones, and all of them with `RANKS_COLL_SHM=0`, send messages.
#[test]
fn small_world_all_reductions_of_one_hosts_ranks_send_no_messages() {
    let small = pairs_of(&["--transport", "shm"], &["allreduce", "100", "128"]);
    assert!(small.is_empty(), "{small:?}");
    let off = pairs_of(
        &["--transport", "shm", "-x", "RANKS_COLL_SHM=0"],
        &["allreduce", "100", "128"],
    );
    assert!(!off.is_empty(), "{off:?}");
    let large = pairs_of(&["--transport", "shm"], &["allreduce", "100", "2048"]);
    assert!(!large.is_empty(), "{large:?}");
}

/// Every nonblocking collective against its blocking form (all in flight at once, waited
/// in reverse), 3000 all-reduces and 3000 barriers in flight at once, and the progress
/// rule: a rank blocked in a receive still advances its pending collective.
#[test]
fn nonblocking_collectives_are_state_machines() {
    for n in [1, 2, 3, 5, 8] {
        testjob_ok_on_every_rank(n, "shm", &["nbc"], "nbc ok");
    }
    testjob_ok_on_every_rank(3, "uds", &["nbc"], "nbc ok");
    testjob_ok_on_every_rank(3, "quic", &["nbc"], "nbc ok");
}

/// Small all-reductions on communicators that reuse each other's shared-memory slot with
/// other members: the second one's first all-reduction waits until the first one's members
/// have read their last operands, even when one of them reads late
/// (`RANKS_TEST_SLOW_READ`). Without that wait, rank 2 reads the pair's operand in place of
/// rank 0's and its check fails.
#[test]
fn a_reused_slot_keeps_operands_until_every_member_read_them() {
    for (n, transport, slow, hosts, g) in [
        ("4", "shm", "2:2000", "", "3"),
        ("4", "shm", "", "", "3"),
        ("5", "auto", "2:1000", "", "3"),
        // Two levels: rank 2 reads its leader's (rank 0's) result.
        ("5", "shm", "2:2000", "0,0,0,1,1", "4"),
    ] {
        let var = format!("RANKS_TEST_SLOW_READ={slow}");
        let hosts = format!("RANKS_TEST_HOSTS={hosts}");
        let o = run_job(
            &["-n", n, "--transport", transport, "-x", &var, "-x", &hosts],
            "ranks-testjob",
            &["slot_reuse", "20", g],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{n} ranks, {transport}, slow {slow:?}: {o:?}");
        assert!(o.stdout.contains("slot_reuse ok"), "{o:?}");
    }
}

/// Ranks that disagree on an all-reduction's element type or length, or on a broadcast's
/// type, all get an error instead of a result made of the wrong bytes or a wait for ever,
/// and the communicator stays usable: in shared memory every rank finds the mismatch
/// itself; by messages (and over sockets) the ranks that find it tell the others, which get
/// `CollectiveFailed` (before that notice, they waited for ever). The error says the
/// operands do not match (`CollectiveMismatch`); before, it was a receive's error that named
/// a tag of the call's own and said the message stayed queued.
#[test]
fn an_all_reduction_with_mismatched_operands_fails_on_every_rank() {
    for (n, args) in [
        ("3", &["--transport", "shm"][..]),
        ("3", &["--transport", "auto"]),
        ("3", &["--transport", "shm", "-x", "RANKS_COLL_SHM=0"]),
        ("5", &["--transport", "shm", "-x", "RANKS_COLL_SHM=0"]),
        ("4", &["--transport", "uds"]),
    ] {
        let mut launcher = vec!["-n", n];
        launcher.extend_from_slice(args);
        let o = run_job(&launcher, "ranks-testjob", &["reduce_mismatch"], LIMIT);
        assert_eq!(o.code, 0, "{launcher:?}: {o:?}");
        assert!(o.stdout.contains("reduce_mismatch ok"), "{o:?}");
        assert!(
            o.stdout
                .contains("the operands of this collective call do not match"),
            "{o:?}"
        );
        for wrong in [" with tag ", "stays queued"] {
            assert!(!o.stdout.contains(wrong), "{wrong:?} in {o:?}");
        }
    }
}

/// Collectives of serde values where one rank's values are of another type (i64 against
/// u64, the same bytes for small numbers): the ranks that take a value of the other type
/// fail with `CollectiveMismatch`, and the ranks that wait for a reduction the failing rank
/// cannot finish get `CollectiveFailed`. Before, the values were decoded as they came, and
/// on 4 ranks the all-reduction's root waited for ever for the rank that failed.
#[test]
fn collectives_of_serde_values_of_another_type_fail_on_every_rank_that_needs_them() {
    for (n, args) in [
        ("2", &["--transport", "shm"][..]),
        ("4", &["--transport", "shm"]),
        ("5", &["--transport", "uds"]),
    ] {
        let mut launcher = vec!["-n", n];
        launcher.extend_from_slice(args);
        let o = run_job(&launcher, "ranks-testjob", &["serde_mismatch"], LIMIT);
        assert_eq!(o.code, 0, "{launcher:?}: {o:?}");
        assert!(o.stdout.contains("serde_mismatch ok"), "{o:?}");
        assert!(
            o.stdout
                .contains("operand does not decode as this rank's u64: it was sent as i64"),
            "{o:?}"
        );
        for wrong in [" with tag ", "stays queued"] {
            assert!(!o.stdout.contains(wrong), "{wrong:?} in {o:?}");
        }
    }
}
