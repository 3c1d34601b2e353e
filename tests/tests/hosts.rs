//! Jobs across hosts: real ssh, real agents, real QUIC between network namespaces.
//!
//! The hosts are `ranks-h1` .. `ranks-h4`, made by `bash .ci/netns-hosts.sh up 4` (as root:
//! a network namespace each, with its own address and sshd). They are ignored by a plain
//! `cargo test` (shown as ignored, with the reason); `-- --include-ignored` runs them, and
//! then missing hosts fail them. `ranks-h4` is taken off the network by one test, so no other test uses it.

use std::process::Command;
use std::time::{Duration, Instant};

use ranks_tests::*;

/// These tests are `#[ignore]`d (the test runner shows them as ignored, with the reason)
/// and run with `--include-ignored`, as CI does once it made the hosts: then missing hosts
/// are a failure, never a silent pass.
fn hosts_ready() -> bool {
    static READY: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = READY.get_or_init(|| {
        for h in ["ranks-h1", "ranks-h2", "ranks-h3", "ranks-h4"] {
            let ok = Command::new("ssh")
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=3", h, "true"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "`ssh {h} true` fails; make the test hosts with `sudo bash .ci/netns-hosts.sh up 4`"
                ));
            }
        }
        Ok(())
    });
    if let Err(why) = r {
        panic!("the multi-host tests need their hosts: {why}");
    }
    true
}

fn ok_job(launcher: &[&str], program: &str, args: &[&str], expect: &str) -> Outcome {
    let o = run_job(launcher, program, args, LIMIT);
    assert_eq!(o.code, 0, "{launcher:?} {program} {args:?}: {o:?}");
    assert!(
        o.stdout.contains(expect),
        "{launcher:?} {program} {args:?}: expected {expect:?} in {o:?}"
    );
    assert_clean(&o);
    o
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn primes_runs_across_two_hosts() {
    if !hosts_ready() {
        return;
    }
    ok_job(
        &["-n", "4", "--host", "ranks-h1:2,ranks-h2:2"],
        "primes",
        &[],
        "total: 283146 primes in [1, 4000000]",
    );
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn point_to_point_across_hosts() {
    if !hosts_ready() {
        return;
    }
    let two = ["-n", "2", "--host", "ranks-h1:1,ranks-h2:1"];
    ok_job(&two, "ranks-testjob", &["order", "20000"], "order ok 20000");
    ok_job(&two, "ranks-testjob", &["sizes"], "sizes ok");
    ok_job(&two, "ranks-testjob", &["peerlost"], "peerlost ok");
    // Shared memory within a host and QUIC across, in the same ranks.
    let three = ["-n", "4", "--host", "ranks-h1:2,ranks-h2:1,ranks-h3:1"];
    ok_job(&three, "ranks-testjob", &["fanin", "2000"], "fanin ok 6000");
    ok_job(&three, "ranks-testjob", &["wildcard"], "wildcard ok");
    ok_job(
        &three,
        "ranks-testjob",
        &["nonblocking"],
        "nonblocking ok rank 3",
    );
    // QUIC forced between ranks of one host too.
    ok_job(
        &[
            "-n",
            "4",
            "--host",
            "ranks-h1:2,ranks-h2:2",
            "--transport",
            "quic",
        ],
        "ranks-testjob",
        &["order", "5000"],
        "order ok 5000",
    );
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn collectives_and_primitives_across_hosts() {
    if !hosts_ready() {
        return;
    }
    ok_job(
        &["-n", "5", "--host", "ranks-h1:2,ranks-h2:2,ranks-h3:1"],
        "ranks-testcoll",
        &["small"],
        "collectives ok on 5 ranks",
    );
    ok_job(
        &["-n", "4", "--host", "ranks-h1:2,ranks-h2:2"],
        "ranks-testcoll",
        &["large"],
        "collectives ok on 4 ranks",
    );
    ok_job(
        &["-n", "4", "--host", "ranks-h1:2,ranks-h3:2"],
        "ranks-testprim",
        &["queue", "2000"],
        "queue ok 2000 items",
    );
}

/// Shared numbers across hosts: ranks on the owner's host map them, the others go through
/// the owner; the lessons' counters come out exact (8 ranks x 10,000 atomic increments =
/// 80,000, and the locked counter), every operation mixes, and `SharedMemory` on another
/// host is a clear error.
#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn shared_numbers_across_hosts() {
    if !hosts_ready() {
        return;
    }
    let four = [
        "-n",
        "8",
        "--host",
        "ranks-h1:2,ranks-h2:2,ranks-h3:2,ranks-h4:2",
    ];
    ok_job(
        &four,
        "ranks-testprim",
        &["counter", "10000", "500"],
        "counter ok 80000 4000",
    );
    ok_job(
        &four,
        "ranks-testprim",
        &["shared_across"],
        "shared across ok on 8 ranks",
    );
    ok_job(
        &four,
        "lesson18_counter",
        &[],
        "result: 100 with the lock, 100 with atomic add",
    );
    ok_job(
        &["-n", "2", "--host", "ranks-h1:1,ranks-h2:1"],
        "lesson13_value_array_child",
        &[],
        "3.1415927\n[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]",
    );
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn hostfile_and_map_by_place_ranks() {
    if !hosts_ready() {
        return;
    }
    let file = std::env::temp_dir().join(format!("ranks-test-hostfile-{}", std::process::id()));
    std::fs::write(
        &file,
        "# two test hosts\nranks-h1 slots=2\n\nranks-h2 slots=2  # the second\n",
    )
    .unwrap();
    let f = file.display().to_string();
    let by_slot = ok_job(
        &["-n", "3", "--hostfile", &f],
        "ranks-testjob",
        &["where"],
        "where rank 0 on ranks-h1",
    );
    for l in [
        "where rank 1 on ranks-h1",
        "where rank 2 on ranks-h2",
        "where rank 0 shares its host with 2 rank(s)",
        "where rank 2 shares its host with 1 rank(s)",
    ] {
        assert!(by_slot.stdout.contains(l), "{l}: {by_slot:?}");
    }
    let by_node = ok_job(
        &["-n", "4", "--hostfile", &f, "--map-by", "node"],
        "ranks-testjob",
        &["where"],
        "where rank 0 on ranks-h1",
    );
    for l in [
        "where rank 1 on ranks-h2",
        "where rank 2 on ranks-h1",
        "where rank 3 on ranks-h2",
    ] {
        assert!(by_node.stdout.contains(l), "{l}: {by_node:?}");
    }
    let o = run_job(&["-n", "5", "--hostfile", &f], "hello", &[], LIMIT);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("4 slot(s)"), "{o:?}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn this_host_and_remote_hosts_in_one_job() {
    if !hosts_ready() {
        return;
    }
    ok_job(
        &["-n", "4", "--host", "localhost:2,ranks-h1:2"],
        "ranks-testcoll",
        &["small"],
        "collectives ok on 4 ranks",
    );
    ok_job(
        &[
            "-n",
            "3",
            "--host",
            "localhost:1,ranks-h2:2",
            "--tag-output",
        ],
        "primes",
        &[],
        "[0] total: 283146 primes",
    );
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn a_rank_failing_on_a_remote_host_stops_every_host() {
    if !hosts_ready() {
        return;
    }
    let o = run_job(
        &["-n", "4", "--host", "ranks-h1:2,ranks-h2:2"],
        "ranks-testjob",
        &["fail", "exit3", "3"],
        LIMIT,
    );
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stderr.contains("rank 3 (pid ") && o.stderr.contains(" on ranks-h2) exited with code 3"),
        "{o:?}"
    );
    assert_clean(&o);

    // Killed from outside, on the remote host.
    let mark = format!("remote-kill-{}", std::process::id());
    let killer = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            if wait_for_ranks(&mark, 4, Duration::from_secs(60)) {
                let pid = rank_pid(&mark, 2).expect("rank 2 runs");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        })
    };
    let mut cmd = Command::new(bin("ranks"));
    cmd.args(["run", "-n", "4", "--host", "ranks-h1:2,ranks-h2:2"])
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"]);
    let o = run_command(cmd, LIMIT, mark);
    killer.join().unwrap();
    assert_eq!(o.code, 137, "{o:?}");
    assert!(
        o.stderr
            .contains("on ranks-h2) was killed by signal 9 (SIGKILL)"),
        "{o:?}"
    );
    assert!(o.elapsed < Duration::from_secs(30), "{o:?}");
    assert_clean(&o);
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn ctrl_c_stops_every_host() {
    if !hosts_ready() {
        return;
    }
    let mark = format!("remote-sigint-{}", std::process::id());
    let mut cmd = Command::new(bin("ranks"));
    cmd.args(["run", "-n", "4", "--host", "ranks-h2:2,ranks-h3:2"])
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"])
        .env("RANKS_TEST_LAUNCHER", &mark);
    let killer = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            if wait_for_ranks(&mark, 4, Duration::from_secs(60)) {
                let needle = format!("RANKS_TEST_LAUNCHER={mark}");
                let launcher = std::fs::read_dir("/proc").ok().and_then(|d| {
                    d.flatten().find_map(|e| {
                        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
                        env.split(|&b| b == 0)
                            .any(|kv| kv == needle.as_bytes())
                            .then_some(pid)
                    })
                });
                if let Some(p) = launcher {
                    let _ = Command::new("kill").args(["-INT", &p.to_string()]).status();
                }
            }
        })
    };
    let o = run_command(cmd, LIMIT, mark);
    killer.join().unwrap();
    assert_eq!(o.code, 130, "{o:?}");
    assert!(o.stderr.contains("got SIGINT; stopping the job"), "{o:?}");
    assert_clean(&o);
}

/// Brings the link back up whatever happens in the test.
struct LinkDown(&'static str);

impl Drop for LinkDown {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "set", self.0, "up"])
            .status();
    }
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn losing_a_host_is_detected_named_and_cleaned_up() {
    if !hosts_ready() {
        return;
    }
    let mark = format!("link-down-{}", std::process::id());
    let guard = LinkDown("rkv4");
    let cut = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            if wait_for_ranks(&mark, 4, Duration::from_secs(60)) {
                // Everyone is connected; now take ranks-h4 off the network.
                std::thread::sleep(Duration::from_millis(300));
                let st = Command::new("ip")
                    .args(["link", "set", "rkv4", "down"])
                    .status()
                    .expect("running ip");
                assert!(st.success());
                return Some(Instant::now());
            }
            None
        })
    };
    let mut cmd = Command::new(bin("ranks"));
    cmd.args(["run", "-n", "4", "--host", "ranks-h1:2,ranks-h4:2"])
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["ring", "100000000"]);
    let o = run_command(cmd, LIMIT, mark.clone());
    let cut_at = cut.join().unwrap().expect("the job started");
    let detected_after = cut_at.elapsed();
    assert_eq!(o.code, 255, "{o:?}");
    assert!(o.stderr.contains("lost host ranks-h4"), "{o:?}");
    assert!(o.stderr.contains("rank(s) 2, 3 there"), "{o:?}");
    drop(guard);
    // The agent on the lost host stops its ranks when the launcher falls silent.
    let until = Instant::now() + Duration::from_secs(20);
    while !processes_with_mark(&mark).is_empty() {
        assert!(
            Instant::now() < until,
            "ranks left on the lost host: {:?}",
            processes_with_mark(&mark)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_clean(&o);
    eprintln!("host loss noticed and the job ended within {detected_after:?} of the cut");
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn forged_connections_across_hosts_are_refused() {
    if !hosts_ready() {
        return;
    }
    let o = ok_job(
        &["-n", "2", "--host", "ranks-h1:1,ranks-h3:1"],
        "ranks-testjob",
        &["forge"],
        "job unaffected",
    );
    for c in [
        "own certificate: true",
        "own certificate: false",
        "another job's certificate",
    ] {
        let l = format!("forged connection ({c}) refused");
        assert!(o.stdout.contains(&l), "{l}: {o:?}");
    }
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn bad_hosts_are_one_clear_error() {
    if !hosts_ready() {
        return;
    }
    let check = |launcher: &[&str], program: &str, needles: &[&str]| {
        let mut cmd = Command::new(bin("ranks"));
        let mark = format!("bad-host-{}-{}", std::process::id(), needles[0].len());
        cmd.arg("run")
            .args(launcher)
            .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
            .arg(program);
        let o = run_command(cmd, LIMIT, mark);
        assert_eq!(o.code, 2, "{o:?}");
        for n in needles {
            assert!(o.stderr.contains(n), "{n}: {o:?}");
        }
        assert_eq!(o.stderr.lines().count(), 1, "{o:?}");
        assert_clean(&o);
    };
    let hello = bin("hello").display().to_string();
    check(
        &["-n", "2", "--host", "ranks-h1:1,no-such-host.invalid:1"],
        &hello,
        &["host no-such-host.invalid", "ssh failed"],
    );
    check(
        &[
            "-n",
            "2",
            "--host",
            "ranks-h2:2",
            "--agent",
            "/nonexistent/ranks",
        ],
        &hello,
        &["host ranks-h2", "/nonexistent/ranks", "--agent"],
    );
    check(
        &["-n", "2", "--host", "ranks-h1:2"],
        "/nonexistent/program",
        &["host ranks-h1", "/nonexistent/program not found"],
    );
    check(
        &[
            "-n",
            "2",
            "--host",
            "ranks-h1:1,ranks-h2:1",
            "--transport",
            "shm",
        ],
        &hello,
        &["--transport shm works within one host"],
    );
    check(
        &[
            "-n",
            "2",
            "--host",
            "ranks-h1:1,ranks-h2:1",
            "--iface",
            "nosuchif0",
        ],
        &hello,
        &["nosuchif0"],
    );
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn killing_the_launcher_stops_the_ranks_on_every_host() {
    if !hosts_ready() {
        return;
    }
    let mark = format!("launcher-kill-{}", std::process::id());
    let mut launcher = Command::new(bin("ranks"))
        .args(["run", "-n", "4", "--host", "ranks-h1:2,ranks-h2:2"])
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting the launcher");
    assert!(wait_for_ranks(&mark, 4, Duration::from_secs(60)));
    launcher.kill().expect("SIGKILL to the launcher");
    let _ = launcher.wait();
    // The ssh sessions see their input end; each agent stops its ranks and cleans up.
    let until = Instant::now() + Duration::from_secs(20);
    while !processes_with_mark(&mark).is_empty() {
        assert!(
            Instant::now() < until,
            "ranks left after the launcher died: {:?}",
            processes_with_mark(&mark)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !segments_of(launcher.id()).is_empty() {
        assert!(
            Instant::now() < until,
            "files left: {:?}",
            segments_of(launcher.id())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn progress_patterns_across_hosts() {
    // The halo exchange and out-of-order large receives with shared memory inside a host and
    // QUIC across, at the default rendezvous threshold and with every message a rendezvous.
    if !hosts_ready() {
        return;
    }
    for threshold in ["32768", "1"] {
        let var = format!("RANKS_RENDEZVOUS_THRESHOLD={threshold}");
        for (n, hosts) in [
            ("3", "ranks-h1:2,ranks-h2:1"),
            ("5", "ranks-h1:2,ranks-h2:2,ranks-h3:1"),
        ] {
            let launcher = ["-n", n, "--host", hosts, "-x", &var, "--timeout", "60"];
            let last = format!("rank {}", n.parse::<usize>().unwrap() - 1);
            // land_window: windows of small messages taken in runs, from the shared
            // memory of a host and from QUIC between hosts (a ring of ranks crosses both).
            for scenario in ["halo", "posted_large", "head_to_head", "land_window"] {
                ok_job(
                    &launcher,
                    "ranks-testjob",
                    &[scenario],
                    &format!("{scenario} ok {last}"),
                );
            }
        }
    }
    // Large messages into posted receives waited for as they arrive over QUIC (landed in
    // parts), rank 0 and rank 1 on two hosts; small nonblocking sends held back until a
    // wait still leave while their sender sleeps; and the allocator settings reach the
    // ranks on every host.
    let two = [
        "-n",
        "2",
        "--host",
        "ranks-h1:1,ranks-h2:1",
        "--timeout",
        "60",
    ];
    ok_job(
        &two,
        "ranks-testjob",
        &["land_parts"],
        "land_parts ok rank 1",
    );
    ok_job(
        &two,
        "ranks-testjob",
        &["held_isend"],
        "held_isend ok rank 0",
    );
    let o = ok_job(
        &two,
        "ranks-testjob",
        &["getenv", "GLIBC_TUNABLES"],
        "getenv 1 ",
    );
    for r in 0..2 {
        let line = format!("getenv {r} glibc.malloc.trim_threshold=67108864:");
        assert!(o.stdout.contains(&line), "{o:?}");
    }
}

/// A rank killed on one host: survivors on every host, blocked in a collective or an
/// any-source receive, get `PeerLost` naming it at once (the launcher relays the end to
/// every host's board; QUIC alone would take seconds to notice).
#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn a_death_reaches_every_host_at_once() {
    if !hosts_ready() {
        return;
    }
    for op in ["allreduce", "anysource", "barrier"] {
        let o = run_job(
            &[
                "-n",
                "4",
                "--host",
                "ranks-h1:2,ranks-h2:2",
                "--keep-going",
                "--timeout",
                "4",
            ],
            "ranks-testjob",
            &["dies", op, "kill"],
            LIMIT,
        );
        assert_eq!(o.code, 137, "{op}: {o:?}");
        for r in 0..3 {
            let want = format!("survivor {r} {op}: PeerLost rank 3 ");
            assert!(o.stdout.contains(&want), "{op}: no {want:?} in {o:?}");
        }
        assert_clean(&o);
    }
}

/// The diagnosis gathers every host's records through its agent.
#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn a_deadlock_across_hosts_is_explained() {
    if !hosts_ready() {
        return;
    }
    let o = run_job(
        &[
            "-n",
            "4",
            "--host",
            "ranks-h1:2,ranks-h2:2",
            "--timeout",
            "3",
        ],
        "ranks-testjob",
        &["stuck", "recv"],
        LIMIT,
    );
    assert_eq!(o.code, 124, "{o:?}");
    for r in 0..4 {
        let want = format!("ranks:   rank {r}: blocked in ");
        assert!(o.stderr.contains(&want), "no {want:?} in {o:?}");
    }
    assert!(
        o.stderr.contains(
            "ranks: deadlock: rank 0 recv(from 1, tag 5) -> rank 1 recv(from 0, tag 7) -> rank 0"
        ),
        "{o:?}"
    );
    assert_clean(&o);
}

/// `--trace` across hosts: each agent sends its ranks' records back; every rank is a track
/// named with its host.
#[test]
#[ignore = "needs the test hosts ranks-h1..ranks-h4 (sudo bash .ci/netns-hosts.sh up 4); run with -- --include-ignored"]
fn a_trace_gathers_every_host() {
    if !hosts_ready() {
        return;
    }
    let path = std::env::temp_dir().join(format!("hosts-trace-{}.json", std::process::id()));
    let o = run_job(
        &[
            "-n",
            "4",
            "--host",
            "ranks-h1:2,ranks-h2:2",
            "--trace",
            path.to_str().unwrap(),
        ],
        "ranks-testjob",
        &["traced"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert_clean(&o);
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let t: ranks_launcher::trace::TraceFile = serde_json::from_str(&text).unwrap();
    assert!(t.other_data.missing.is_empty(), "{:?}", t.other_data);
    for (r, host) in [
        (0, "ranks-h1"),
        (1, "ranks-h1"),
        (2, "ranks-h2"),
        (3, "ranks-h2"),
    ] {
        assert_eq!(t.other_data.hosts.get(&r).map(String::as_str), Some(host));
        let sends = t
            .trace_events
            .iter()
            .filter(|e| e.pid == r && e.name == "send" && e.args.tag == Some(5))
            .count();
        assert_eq!(sends, 1, "rank {r}");
    }
}
