//! Communicator management and topologies through the real launcher, against sequential
//! references computed in each rank (the scenarios are in `ranks-testjob`).

use ranks_tests::*;

/// Groups (set operations, translation, compare), `create` in a group's order, and
/// communicators made and dropped 300 times with their ids reused, traffic kept apart.
#[test]
fn groups_and_communicator_management() {
    for n in [1, 2, 3, 5, 8] {
        testjob_ok_on_every_rank(n, "shm", &["groups"], "groups ok");
    }
    testjob_ok_on_every_rank(3, "quic", &["groups"], "groups ok");
}

/// Cartesian grids in 1-3 dimensions: coordinates, shifts, sub-grids and the neighbour
/// collectives, including short periodic dimensions.
#[test]
fn cartesian_topologies() {
    for n in [1, 2, 3, 5, 8] {
        testjob_ok_on_every_rank(n, "shm", &["cart"], "cart ok");
    }
    testjob_ok_on_every_rank(3, "uds", &["cart"], "cart ok");
}

/// The 2-D heat equation on a Cartesian grid with halo exchange gives the serial solution
/// exactly, on grids of 1x1 to 4x2 ranks.
#[test]
fn heat_equation_matches_the_serial_solution() {
    for n in [1, 2, 3, 5, 8] {
        let np = n.to_string();
        let o = run_job(&["-n", &np], "heat", &["40", "30", "100"], LIMIT);
        assert_eq!(o.code, 0, "heat on {n} ranks: {o:?}");
        assert!(
            o.stdout
                .contains("max difference from the serial solution: 0"),
            "heat on {n} ranks:\n{}",
            o.stdout
        );
        assert_clean(&o);
    }
}
