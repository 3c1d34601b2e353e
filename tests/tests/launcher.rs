//! The launcher: exit rules, failures, timeouts, signals, output, clean-up.

use std::process::Command;
use std::time::Duration;

use ranks_tests::*;

#[test]
fn hello_runs_every_rank_with_distinct_pids() {
    let o = run_job(&["-n", "4"], "hello", &[], LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    let mut pids = Vec::new();
    for r in 0..4 {
        let line = o.lines_with(&format!("hello from rank {r} of 4"));
        assert_eq!(line.len(), 1, "{o:?}");
        pids.push(
            line[0]
                .rsplit("pid ")
                .next()
                .unwrap()
                .trim_end_matches(')')
                .to_string(),
        );
    }
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 4, "pids must differ: {pids:?}");
    assert_clean(&o);
}

#[test]
fn primes_workload_gives_the_lesson_counts_after_the_barrier() {
    let o = run_job(&["-n", "4", "--tag-output"], "primes", &[], LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    for (r, count) in [(0, 78498), (1, 70435), (2, 67883), (3, 66330)] {
        assert_eq!(
            o.lines_with(&format!("[{r}] rank {r}: {count} primes"))
                .len(),
            1,
            "{}",
            o.stdout
        );
    }
    assert_eq!(
        o.lines_with("[0] total: 283146 primes in [1, 4000000]")
            .len(),
        1,
        "{}",
        o.stdout
    );
    // Every line is whole and tagged.
    assert!(o.stdout.lines().all(|l| l.starts_with('[')), "{}", o.stdout);
    assert_clean(&o);
}

#[test]
fn tag_output_never_mixes_lines() {
    let o = run_job(
        &["-n", "4", "--tag-output"],
        "ranks-testjob",
        &["fanin", "2000"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    for l in o.stdout.lines() {
        assert!(
            l.starts_with("[0] ")
                || l.starts_with("[1] ")
                || l.starts_with("[2] ")
                || l.starts_with("[3] "),
            "{l:?}"
        );
    }
}

fn check_failure(how: &str, code: i32, why: &str) {
    for transport in ["shm", "uds"] {
        let o = run_job(
            &["-n", "4", "--transport", transport],
            "ranks-testjob",
            &["fail", how, "2"],
            LIMIT,
        );
        assert_eq!(o.code, code, "{how} over {transport}: {o:?}");
        assert!(
            o.stderr.contains(&"ranks: rank 2 (pid".to_string()),
            "{o:?}"
        );
        assert!(o.stderr.contains(why), "{o:?}");
        assert!(o.stderr.contains("stopping the other 3 rank(s)"), "{o:?}");
        assert_clean(&o);
    }
}

#[test]
fn a_panicking_rank_stops_the_job_with_its_code() {
    check_failure("panic", 101, "exited with code 101 (a Rust panic)");
}

/// The failing rank's last stderr lines are shown again at the end, with its rank, so the
/// cause is not lost far up in the output.
#[test]
fn the_failing_rank_s_last_stderr_lines_close_the_output() {
    let o = run_job(
        &["-n", "3"],
        "ranks-testjob",
        &["fail", "panic", "1"],
        LIMIT,
    );
    assert_eq!(o.code, 101, "{o:?}");
    let lines: Vec<&str> = o.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("ranks: the last ") && l.ends_with("rank 1 wrote to stderr:"))
        .unwrap_or_else(|| panic!("no tail of rank 1: {o:?}"));
    let tail = &lines[at + 1..];
    assert!(
        !tail.is_empty() && tail.iter().all(|l| l.starts_with("[1] ")),
        "{o:?}"
    );
    assert!(
        tail.iter().any(|l| l.contains("rank 1 panics on purpose")),
        "{o:?}"
    );
    // A rank killed without a word has no tail to show.
    let o = run_job(
        &["-n", "3"],
        "ranks-testjob",
        &["fail", "sigkill", "1"],
        LIMIT,
    );
    assert_eq!(o.code, 137, "{o:?}");
    assert!(!o.stderr.contains("wrote to stderr"), "{o:?}");
}

#[test]
fn a_rank_exiting_3_makes_the_job_exit_3() {
    check_failure("exit3", 3, "exited with code 3");
}

#[test]
fn a_rank_killed_by_sigkill_makes_the_job_exit_137() {
    check_failure("sigkill", 137, "was killed by signal 9 (SIGKILL)");
}

#[test]
fn timeout_stops_the_job_and_names_running_ranks() {
    let o = run_job(
        &["-n", "3", "--timeout", "1"],
        "ranks-testjob",
        &["sleep", "60"],
        LIMIT,
    );
    assert_eq!(o.code, 124, "{o:?}");
    assert!(o.stderr.contains("rank(s) still running: 0, 1, 2"), "{o:?}");
    assert!(o.elapsed < Duration::from_secs(30), "{o:?}");
    assert_clean(&o);
}

#[test]
fn sigint_to_the_launcher_stops_everything() {
    let mark = "sigint-test".to_string() + &std::process::id().to_string();
    let mut cmd = Command::new(bin("ranks"));
    cmd.args(["run", "-n", "3", "-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"]);
    let pid_file = std::env::temp_dir().join(format!("ranks-sigint-{}", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    // Interrupt once every rank is up.
    let killer = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                if processes_with_mark(&mark).len() >= 4 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let launcher = launcher_of(&mark);
            if let Some(p) = launcher {
                let _ = Command::new("kill").args(["-INT", &p.to_string()]).status();
            }
        })
    };
    cmd.env("RANKS_TEST_MARK", &mark);
    let o = run_command(cmd, LIMIT, mark);
    killer.join().unwrap();
    assert_eq!(o.code, 130, "{o:?}");
    assert!(o.stderr.contains("got SIGINT; stopping the job"), "{o:?}");
    assert_clean(&o);
}

#[test]
fn usage_errors_exit_2_with_a_clear_message() {
    let cases: &[&[&str]] = &[
        &["run", "-n", "0", "hello"],
        &["run", "-n", "2", "/no/such/program"],
        &["run", "-n", "2", "no-such-program-on-path"],
        &["run", "--bogus", "-n", "2", "hello"],
        &["run", "-n", "two", "hello"],
        &["run", "-n", "2", "--timeout", "-1", "hello"],
        &[
            "run",
            "-n",
            "2",
            "--host",
            "a:1",
            "--hostfile",
            "/x",
            "hello",
        ],
        &["run", "-n", "2", "--host", "a:0", "hello"],
        &["run", "-n", "2", "--hostfile", "/no/such/hostfile", "hello"],
        &["run", "-n", "3", "--host", "localhost:2", "hello"],
        &["run", "-n", "2", "--bind", "not-an-address", "hello"],
        &[
            "run",
            "-n",
            "2",
            "--bind",
            "127.0.0.1",
            "--iface",
            "lo",
            "hello",
        ],
        &["run", "-n", "2", "--ports", "9-1", "hello"],
    ];
    // Errors clap finds (unknown option, bad number) come with the usage line; the
    // launcher's own checks are one line.
    let from_clap = [3, 4, 5];
    for (i, args) in cases.iter().enumerate() {
        let mut cmd = Command::new(bin("ranks"));
        cmd.args(*args);
        let o = run_command(cmd, LIMIT, "none".into());
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert!(o.stderr.starts_with("ranks: error: "), "{args:?}: {o:?}");
        assert!(!o.stderr.contains("panicked"), "{o:?}");
        if from_clap.contains(&i) {
            assert!(o.stderr.contains("try '--help'"), "{args:?}: {o:?}");
        } else {
            assert_eq!(o.stderr.lines().count(), 1, "{args:?}: {o:?}");
        }
    }
}

#[test]
fn everything_after_the_program_is_the_programs_like_mpirun() {
    let run = |args: &[&str]| {
        let mut cmd = Command::new(bin("ranks"));
        cmd.arg("run").args(args);
        run_command(cmd, LIMIT, "none".into())
    };
    // Options of the launcher's own names, after the program, go to the program.
    let o = run(&["-n", "2", "echo", "--timeout", "30", "-n", "100", "-x", "A"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "--timeout 30 -n 100 -x A\n".repeat(2), "{o:?}");
    // mpirun's -np, among the launcher's options only.
    let o = run(&["-np", "3", "--timeout", "20", "echo", "-np", "1"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout, "-np 1\n".repeat(3), "{o:?}");
    // `--` before the program still works.
    let o = run(&["-n", "1", "--", "echo", "--verbose"]);
    assert_eq!((o.code, o.stdout.as_str()), (0, "--verbose\n"), "{o:?}");
    // A missing -n names it in full, with the usage line.
    let o = run(&["echo", "x"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("--np <N>") && o.stderr.contains("Usage:"),
        "{o:?}"
    );
    // A misspelt option gets a suggestion.
    let o = run(&["-n", "2", "--timeot", "3", "echo"]);
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("similar argument exists: '--timeout'"),
        "{o:?}"
    );
}

#[test]
fn stale_segments_of_dead_launchers_are_reaped() {
    // A pid that surely is not running: a child that already exited.
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let stale = format!("/dev/shm/ranks-{dead}-deadbeef");
    // No other test's launcher may reap it first (seen once): this job runs alone.
    let _alone = alone();
    std::fs::write(&stale, b"left by a crashed job").unwrap();
    let o = run_job(&["-n", "2"], "hello", &[], LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        !std::path::Path::new(&stale).exists(),
        "stale segment survived"
    );
    assert!(o.stderr.contains("left by a job that died"), "{o:?}");
}

#[test]
fn killing_the_launcher_takes_the_ranks_with_it() {
    let mark = format!("sigkill-launcher-{}", std::process::id());
    let mut child = Command::new(bin("ranks"))
        .args(["run", "-n", "3", "-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin("ranks-testjob"))
        .args(["sleep", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..1000 {
        if processes_with_mark(&mark).len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(processes_with_mark(&mark).len(), 3);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_with_mark(&mark).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "ranks outlived their launcher"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its segment is reaped by the next launcher.
    let o = run_job(&["-n", "1"], "hello", &[], LIMIT);
    assert_eq!(o.code, 0);
    assert!(segments_of(child.id()).is_empty());
}

#[test]
fn environment_is_passed_with_x() {
    let o = run_job(
        &["-n", "2", "-x", "RANKS_TEST_MARK=ignored"],
        "hello",
        &[],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn the_launchers_own_lines_stay_whole_while_ranks_flood_the_output() {
    // stdout and stderr into one pipe, as with `2>&1`: a launcher line written in pieces
    // could be cut by a rank's line (seen: "ranks: rank 1 (pid 30850chatter from ...").
    let launcher = bin("ranks");
    let job = bin("ranks-testjob");
    for _ in 0..30 {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "{} run -n 3 {} chatter 2>&1",
            launcher.display(),
            job.display()
        ));
        let o = run_command(cmd, LIMIT, "none".into());
        assert_eq!(o.code, 3, "{:?}", o.stderr);
        let ours: Vec<&str> = o.stdout.lines().filter(|l| l.contains("ranks: ")).collect();
        assert!(!ours.is_empty(), "no launcher line");
        for l in ours {
            assert!(l.starts_with("ranks: "), "cut launcher line: {l:?}");
            if l.starts_with("ranks: rank 1 ") {
                assert!(
                    l.ends_with("exited with code 3"),
                    "cut launcher line: {l:?}"
                );
            }
        }
    }
}

#[test]
fn abort_ends_the_job_with_its_code_whatever_the_others_do() {
    // The survivors fail on PeerLost right after the abort (rank 0 among them, a lower rank
    // than the aborting one): the job's code is still the abort's, every time.
    for keep_going in [false, true] {
        for _ in 0..8 {
            let mut launcher = vec!["-n", "4", "--timeout", "60"];
            if keep_going {
                launcher.push("--keep-going");
            }
            let o = run_job(&launcher, "ranks-testjob", &["abort", "3"], LIMIT);
            assert_eq!(o.code, 7, "keep-going {keep_going}: {o:?}");
            assert!(o.stderr.contains("ranks: rank 3 called abort(7)"), "{o:?}");
            assert_clean(&o);
        }
    }
}

#[test]
fn ranks_main_prints_a_failing_ranks_error_readably() {
    let o = run_job(&["-n", "2"], "ranks-mainerr", &[], LIMIT);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr
            .contains("rank 1: error: message from rank 0 with tag 9 does not decode as"),
        "{o:?}"
    );
    assert!(!o.stderr.contains("TypeMismatch {"), "Debug form: {o:?}");
    assert_clean(&o);
}

/// A program whose `main` returns `Result<(), ranks::Error>` (as the README's do) prints
/// the error's sentence, not its variant's fields; a malformed setting is named with its
/// value, and a size may be written `64K`.
#[test]
fn a_main_returning_the_error_prints_its_sentence() {
    let bad = "RANKS_RENDEZVOUS_THRESHOLD=lots";
    let o = run_job(&["-n", "2", "-x", bad], "hello", &[], LIMIT);
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains(
            "Error: bootstrap failed: RANKS_RENDEZVOUS_THRESHOLD=\"lots\" is not a size in bytes"
        ),
        "{o:?}"
    );
    assert!(!o.stderr.contains("Bootstrap("), "Debug form: {o:?}");
    assert_clean(&o);
    let o = run_job(
        &["-n", "2", "-x", "RANKS_RENDEZVOUS_THRESHOLD=64K"],
        "hello",
        &[],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
}

#[test]
fn ranks_log_has_no_colour_codes_when_not_on_a_terminal() {
    let o = run_job(&["-n", "2", "-x", "RANKS_LOG=debug"], "hello", &[], LIMIT);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains("DEBUG"), "{o:?}");
    assert!(!o.stderr.contains('\u{1b}'), "colour codes in {o:?}");
}

/// Another user can open none of a job's files (shared memory, job board, socket directory)
/// and so cannot reach a rank's socket.
#[test]
#[ignore = "needs root, to act as another user; CI runs it with -- --include-ignored"]
fn another_user_cannot_open_the_jobs_files_or_reach_its_ranks() {
    for transport in ["shm", "uds"] {
        another_user_check(transport);
    }
}

fn another_user_check(transport: &str) {
    let mark = format!("uid-test-{}-{transport}", std::process::id());
    let mut cmd = Command::new(bin("ranks"));
    cmd.args([
        "run",
        "-n",
        "2",
        "--transport",
        transport,
        "--timeout",
        "20",
    ])
    .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
    .arg(bin("ranks-testjob"))
    .args(["sleep", "20"])
    .env("RANKS_TEST_MARK", &mark);
    let prober = {
        let mark = mark.clone();
        std::thread::spawn(move || {
            assert!(
                wait_for_ranks(&mark, 2, Duration::from_secs(20)),
                "ranks never started"
            );
            let launcher = launcher_of(&mark).expect("the launcher");
            let prefix = format!("ranks-{launcher}-");
            let mut paths: Vec<std::path::PathBuf> = Vec::new();
            for dir in ["/dev/shm".into(), std::env::temp_dir()] {
                for e in std::fs::read_dir(&dir).unwrap().flatten() {
                    if e.file_name().to_string_lossy().starts_with(&prefix) {
                        paths.push(e.path());
                    }
                }
            }
            let dirs: Vec<_> = paths.iter().filter(|p| p.is_dir()).cloned().collect();
            for d in &dirs {
                for e in std::fs::read_dir(d).unwrap().flatten() {
                    paths.push(e.path());
                }
            }
            assert!(
                paths
                    .iter()
                    .any(|p| p.to_string_lossy().ends_with("-board")),
                "no job board among {paths:?}"
            );
            // shm: the segment and the board; uds: the board and the socket directory.
            assert!(paths.len() >= 2, "{paths:?}");
            let as_nobody = |args: &[&str]| {
                Command::new("setpriv")
                    .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                    .args(args)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .expect("setpriv")
                    .success()
            };
            // The check itself works: nobody can read a world-readable file.
            assert!(
                as_nobody(&["cat", "/etc/hostname"]),
                "setpriv does not work here"
            );
            for p in &paths {
                let what = if p.is_dir() { "ls" } else { "cat" };
                let s = p.to_string_lossy();
                assert!(!as_nobody(&[what, &s]), "another user could {what} {s}");
                // What is inside the job directory (the ranks' sockets) cannot even be reached.
                if dirs.iter().any(|d| p.starts_with(d) && p != d) {
                    assert!(!as_nobody(&["test", "-e", &s]), "another user reaches {s}");
                }
            }
            let _ = Command::new("kill").arg(launcher.to_string()).status();
            paths.len()
        })
    };
    let o = run_command(cmd, LIMIT, mark);
    let checked = prober.join().unwrap();
    assert!(checked >= 2, "{checked} paths checked");
    assert_eq!(o.code, 143, "{o:?}");
    assert_clean(&o);
}
