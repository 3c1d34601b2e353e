//! Point-to-point messaging through real jobs, over both local transports.

use ranks_tests::*;

fn job_ok(n: usize, transport: &str, args: &[&str], expect: &str) -> Outcome {
    let np = n.to_string();
    let o = run_job(
        &["-n", &np, "--transport", transport],
        "ranks-testjob",
        args,
        LIMIT,
    );
    assert_eq!(o.code, 0, "{args:?} on {n} ranks over {transport}: {o:?}");
    assert!(
        o.stdout.contains(expect),
        "{args:?}: expected {expect:?} in\n{}",
        o.stdout
    );
    assert_clean(&o);
    o
}

#[test]
fn hundred_thousand_messages_stay_in_order() {
    job_ok(2, "shm", &["order", "100000"], "order ok 100000");
    job_ok(2, "uds", &["order", "100000"], "order ok 100000");
}

#[test]
fn seven_senders_to_one_any_source_receiver() {
    job_ok(8, "shm", &["fanin", "20000"], "fanin ok 140000");
    job_ok(8, "uds", &["fanin", "5000"], "fanin ok 35000");
}

#[test]
fn messages_from_0_bytes_to_64_mib() {
    job_ok(2, "shm", &["sizes"], "sizes ok");
    job_ok(2, "uds", &["sizes"], "sizes ok");
}

#[test]
fn large_messages_without_cross_memory_attach() {
    // RANKS_CMA=0 forces the streaming fallback of the rendezvous path.
    let o = run_job(
        &["-n", "2", "-x", "RANKS_CMA=0"],
        "ranks-testjob",
        &["sizes"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("sizes ok"));
}

#[test]
fn large_messages_when_the_kernel_refuses_to_pull() {
    // Senders still offer rendezvous, every pull is refused: receivers ask for the bytes to
    // be streamed (Nack), for blocking, nonblocking and borrowed sends alike.
    for scenario in ["sizes", "nonblocking"] {
        let o = run_job(
            &["-n", "3", "-x", "RANKS_TEST_REFUSE_PULL=1"],
            "ranks-testjob",
            &[scenario],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{scenario}: {o:?}");
        assert_clean(&o);
    }
}

#[test]
fn tags_and_wildcards_match_like_mpi() {
    job_ok(3, "shm", &["wildcard"], "wildcard ok");
    job_ok(3, "uds", &["wildcard"], "wildcard ok");
}

#[test]
fn wrong_type_names_source_tag_and_type() {
    let o = job_ok(2, "shm", &["mismatch"], "mismatch ok");
    assert!(
        o.stdout
            .contains("message from rank 0 with tag 4 does not decode as u64"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("alloc::string::String"), "{}", o.stdout);
    assert!(
        o.stdout.contains(
            "with tag 8 does not decode as u32: it was sent as i32; the message stays queued"
        ),
        "{}",
        o.stdout
    );
}

#[test]
fn bad_ranks_tags_and_buffers_are_errors() {
    let o = job_ok(2, "shm", &["badargs"], "badargs ok");
    assert!(
        o.stdout
            .contains("invalid rank 5: the communicator has 2 ranks"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("has 16 bytes but the buffer holds 8"),
        "{}",
        o.stdout
    );
}

#[test]
fn oversized_messages_are_refused_and_the_stream_goes_on() {
    for t in ["shm", "uds"] {
        let o = run_job(
            &["-n", "2", "--transport", t, "-x", "RANKS_MAX_MESSAGE=1000"],
            "ranks-testjob",
            &["toolarge"],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(
            o.stdout
                .contains("has 5000 bytes, above the limit of 1000 bytes"),
            "{}",
            o.stdout
        );
        assert!(o.stdout.contains("toolarge ok"));
    }
}

#[test]
fn waiting_on_a_departed_peer_is_peer_lost_not_a_hang() {
    for t in ["shm", "uds"] {
        let o = job_ok(2, t, &["peerlost"], "peerlost ok");
        assert!(o.stdout.contains("rank 1 is gone"), "{}", o.stdout);
    }
}

/// `ssend`/`issend` complete only once the receiver matched (checked against a receiver
/// that holds back), at sizes from 0 to 1 MiB, over every transport: over uds and QUIC,
/// where nobody pulls, the receiver's refusal of the pull is what lets the sender go on.
#[test]
fn synchronous_sends_wait_for_their_receive() {
    for (n, t) in [(2, "shm"), (5, "shm"), (3, "uds"), (3, "quic"), (1, "shm")] {
        job_ok(n, t, &["ssend"], &format!("ssend ok rank {}", n - 1));
    }
}

#[test]
fn nonblocking_requests_and_sendrecv() {
    job_ok(3, "shm", &["nonblocking"], "nonblocking ok rank 2");
    job_ok(4, "uds", &["nonblocking"], "nonblocking ok rank 3");
}

#[test]
fn async_forms_work_from_tokio() {
    job_ok(3, "shm", &["async"], "async ok rank 0");
}

#[test]
fn eight_ranks_on_two_cores_pass_a_ring_token() {
    job_ok(8, "shm", &["ring", "2000"], "ring ok 16000");
    job_ok(8, "uds", &["ring", "500"], "ring ok 4000");
}

#[test]
fn eight_ranks_ping_pong_in_pairs() {
    let o = run_job(&["-n", "8"], "ping_pong", &["5000"], LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        o.lines_with("5000 round trips, ball = 5000").len(),
        4,
        "{}",
        o.stdout
    );
}

#[test]
fn a_program_without_the_launcher_is_a_world_of_one() {
    let out = std::process::Command::new(bin("ranks-testjob"))
        .arg("singleton")
        .env_remove("RANKS_SIZE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("singleton ok size 1 transport local"));
}

/// Request sets (`wait_any`, `wait_some`, `test_some`, `test_all`): receives from every other
/// rank arriving at staggered times, each returned once with its own result, on 1, 2, 3 and
/// 5 ranks over every transport; with a rank that leaves without sending, its receive alone
/// fails with `PeerLost` naming it and the rest complete.
#[test]
fn request_sets_complete_each_request_once() {
    for transport in ["shm", "uds", "quic"] {
        for n in [1, 2, 3, 5] {
            let o = job_ok(n, transport, &["requestsets"], "request sets ok");
            assert_eq!(o.lines_with("request sets ok").len(), n, "{o:?}");
        }
        let o = job_ok(4, transport, &["requestsets", "dead"], "lost [3]");
        assert_eq!(o.lines_with("received, lost [3]").len(), 3, "{o:?}");
    }
}

/// Matched probe: two threads of rank 0 `mprobe` and receive messages of many sizes (large
/// ones by rendezvous; with threshold 1 every one) from every other rank, each receiving
/// exactly what its probe described; `improbe`, put-back on drop and on a type mismatch.
/// Persistent requests: a ring set up once and started 20 times.
#[test]
fn matched_probe_and_persistent_requests() {
    for transport in ["shm", "uds", "quic"] {
        for n in [1, 3, 5] {
            job_ok(
                n,
                transport,
                &["mprobe"],
                &format!("mprobe ok on {n} ranks"),
            );
            let o = job_ok(n, transport, &["persistent"], "persistent ok");
            assert_eq!(o.lines_with("persistent ok").len(), n, "{o:?}");
        }
        let o = run_job(
            &[
                "-n",
                "3",
                "--transport",
                transport,
                "-x",
                "RANKS_RENDEZVOUS_THRESHOLD=1",
            ],
            "ranks-testjob",
            &["mprobe"],
            LIMIT,
        );
        assert_eq!(o.code, 0, "{o:?}");
        assert!(o.stdout.contains("mprobe ok on 3 ranks"), "{o:?}");
        assert_clean(&o);
    }
}
