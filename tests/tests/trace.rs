//! `ranks run --trace` and `ranks report`, through the real launcher.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ranks_launcher::trace::{ChromeEvent, TraceFile};
use ranks_tests::{assert_clean, bin, run_job, LIMIT};

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("trace-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn read_trace(path: &Path) -> TraceFile {
    let text = std::fs::read_to_string(path).expect("the trace was written");
    serde_json::from_str(&text).expect("the trace is JSON in the Chrome trace format")
}

fn calls<'a>(t: &'a TraceFile, rank: u32, name: &str) -> Vec<&'a ChromeEvent> {
    t.trace_events
        .iter()
        .filter(|e| e.ph == "X" && e.pid == rank && e.name == name)
        .collect()
}

/// Every rank's calls land in one trace with what they were about.
fn check_traced_job(transport: &str, n: usize) {
    let dir = scratch(transport);
    let path = dir.join("job.json");
    let o = run_job(
        &[
            "-n",
            &n.to_string(),
            "--transport",
            transport,
            "--trace",
            path.to_str().unwrap(),
        ],
        "ranks-testjob",
        &["traced"],
        LIMIT,
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(&format!("trace of {n} rank(s)")), "{o:?}");
    assert_clean(&o);
    let t = read_trace(&path);
    assert_eq!(t.other_data.ranks as usize, n);
    assert!(t.other_data.missing.is_empty());
    for r in 0..n as u32 {
        let next = (r + 1) % n as u32;
        // A track named after the rank.
        assert!(
            t.trace_events.iter().any(|e| e.ph == "M"
                && e.pid == r
                && e.name == "process_name"
                && e.args
                    .name
                    .as_deref()
                    .is_some_and(|s| s.starts_with(&format!("rank {r} ")))),
            "no track for rank {r}"
        );
        // Its ring send: peer, tag and bytes.
        let ring: Vec<_> = calls(&t, r, "send")
            .into_iter()
            .filter(|e| e.args.tag == Some(5))
            .collect();
        assert_eq!(ring.len(), 1, "rank {r}: {ring:?}");
        assert_eq!(ring[0].args.peer, Some(next));
        assert_eq!(ring[0].args.bytes, Some(1000 * (u64::from(r) + 1)));
        // Its receive request's wait (or, if the message was there, nothing to wait for).
        // A collective with the point-to-point steps inside it.
        let barrier = calls(&t, r, "barrier");
        assert_eq!(barrier.len(), 1, "rank {r}");
        assert_eq!(barrier[0].cat, "collective");
        // The lock, owned by rank 0.
        let lock = calls(&t, r, "Lock.acquire");
        assert_eq!(lock.len(), 1, "rank {r}");
        assert_eq!(
            (lock[0].cat.as_str(), lock[0].args.owner),
            ("primitive", Some(0))
        );
        // Every rank but the last waited in the barrier for the last one's 300 ms sleep.
        if r + 1 < n as u32 {
            let d = barrier[0].dur.unwrap();
            assert!(d >= 200_000.0, "rank {r} barrier took only {d} us");
        }
    }
    // Rank 0's any-source receives name the ranks they matched.
    let mut from: Vec<u32> = calls(&t, 0, "recv")
        .into_iter()
        .filter(|e| e.args.tag == Some(9))
        .filter_map(|e| e.args.peer)
        .collect();
    from.sort();
    assert_eq!(from, (1..n as u32).collect::<Vec<_>>());

    // The report reads it back.
    let svg = dir.join("traffic.svg");
    let out = std::process::Command::new(bin("ranks"))
        .args([
            "report",
            path.to_str().unwrap(),
            "--svg",
            svg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{n} ranks")), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("1 -> 2") && l.contains("2.0 KiB")),
        "{text}"
    );
    assert!(text.contains("barrier("), "{text}");
    let pic = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(pic.matches("<title>").count(), n * n);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_traced_job_on_shared_memory() {
    check_traced_job("shm", 3);
}

#[test]
fn a_traced_job_over_unix_sockets() {
    check_traced_job("uds", 4);
}

#[test]
fn a_traced_job_over_quic() {
    check_traced_job("quic", 3);
}

#[test]
fn a_killed_rank_is_named_missing_and_the_others_are_traced() {
    let dir = scratch("killed");
    let path = dir.join("job.json");
    let o = run_job(
        &["-n", "3", "--keep-going", "--trace", path.to_str().unwrap()],
        "ranks-testjob",
        &["traced", "kill"],
        LIMIT,
    );
    assert_eq!(o.code, 137, "{o:?}");
    assert!(o.stderr.contains("no trace from rank(s) 1"), "{o:?}");
    assert_clean(&o);
    let t = read_trace(&path);
    assert_eq!(t.other_data.missing, [1]);
    for r in [0, 2] {
        assert_eq!(calls(&t, r, "Lock.acquire").len(), 1, "rank {r}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_trace_nothing_is_recorded() {
    let o = run_job(
        &["-n", "2"],
        "ranks-testjob",
        &["where"],
        Duration::from_secs(60),
    );
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!o.stderr.contains("trace"), "{o:?}");
    assert_clean(&o);
}

#[test]
fn report_of_a_file_that_is_not_a_trace_fails_clearly() {
    let dir = scratch("bad");
    let path = dir.join("x.json");
    std::fs::write(&path, "[1, 2, 3]").unwrap();
    let out = std::process::Command::new(bin("ranks"))
        .args(["report", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a trace of ranks"), "{err}");
    let missing = dir.join("none.json");
    let out = std::process::Command::new(bin("ranks"))
        .args(["report", missing.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading"));
    let _ = std::fs::remove_dir_all(&dir);
}
