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
