//! Helpers for the integration tests: build the binaries once, run jobs through the real
//! launcher, and check that nothing is left behind.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace's target directory for the profile these tests were built with.
fn target_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    base.join(if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    })
}

/// Build the launcher, the examples and the test jobs (once per test process).
fn ensure_built() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .args([
                "build",
                "--bins",
                "-p",
                "ranks-launcher",
                "-p",
                "ranks-examples",
                "-p",
                "ranks-tests",
            ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build");
        assert!(st.success(), "building the binaries failed");
    });
}

/// Path of a binary built from this workspace.
pub fn bin(name: &str) -> PathBuf {
    ensure_built();
    let p = target_dir().join(name);
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// What a finished job left.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Pid of the launcher (its segments are named after it).
    pub launcher_pid: u32,
    /// Value of `RANKS_TEST_MARK` given to every rank.
    pub mark: String,
}

impl Outcome {
    pub fn lines_with(&self, needle: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.contains(needle)).collect()
    }
}

fn unique_mark() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{}-{}-{}",
        std::process::id(),
        n,
        Instant::now().elapsed().as_nanos()
    )
}

static JOBS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Run the jobs of the calling test with no other job of this test binary at the same time
/// (while the guard lives): for what every launcher does at start, such as removing what
/// dead jobs left, which another test's launcher would otherwise do first.
pub fn alone() -> Alone {
    let guard = JOBS.write().unwrap_or_else(|p| p.into_inner());
    ALONE.with(|a| a.set(true));
    Alone { _guard: guard }
}

thread_local! {
    /// This thread holds `alone()`: its own jobs need no shared lock.
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While it lives, only the jobs of the thread holding it run (see [`alone`]).
pub struct Alone {
    _guard: std::sync::RwLockWriteGuard<'static, ()>,
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// Run `ranks <args>` with `launcher_args` before the program and `prog_args` after it;
/// kill it if it runs longer than `limit` (a test failure, not a job timeout).
pub fn run_job(
    launcher_args: &[&str],
    program: &str,
    prog_args: &[&str],
    limit: Duration,
) -> Outcome {
    let mark = unique_mark();
    let mut cmd = Command::new(bin("ranks"));
    cmd.arg("run")
        .args(launcher_args)
        .args(["-x", &format!("RANKS_TEST_MARK={mark}")])
        .arg(bin(program))
        .args(prog_args);
    run_command(cmd, limit, mark)
}

/// Run any command like a job (for launcher error cases).
pub fn run_command(mut cmd: Command, limit: Duration, mark: String) -> Outcome {
    // Jobs of this test binary run side by side, except with one that must be alone.
    let _shared =
        (!ALONE.with(std::cell::Cell::get)).then(|| JOBS.read().unwrap_or_else(|p| p.into_inner()));
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE");
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawning the launcher");
    let launcher_pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting for the launcher") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = t_err.join().unwrap_or_default();
            panic!("job did not finish within {limit:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = start.elapsed();
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    Outcome {
        code,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
        elapsed,
        launcher_pid,
        mark,
    }
}

/// Pids of live processes whose environment carries this job's mark.
pub fn processes_with_mark(mark: &str) -> Vec<u32> {
    let needle = format!("RANKS_TEST_MARK={mark}");
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            // Zombies have an empty environment; only live processes count.
            if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
                found.push(pid);
            }
        }
    }
    found
}

/// Files in /dev/shm and job directories in the temp directory made for the job of the
/// launcher with this pid: `ranks-PID-...` here, `ranks-AGENTPID-PID-...` by an agent.
pub fn segments_of(launcher_pid: u32) -> Vec<String> {
    let mine = |n: &str| {
        let Some(rest) = n.strip_prefix("ranks-") else {
            return false;
        };
        let parts: Vec<&str> = rest.split('-').collect();
        let pid = launcher_pid.to_string();
        parts.first() == Some(&pid.as_str()) || parts.get(1) == Some(&pid.as_str())
    };
    let mut out = Vec::new();
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        if let Ok(d) = std::fs::read_dir(&dir) {
            out.extend(
                d.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .filter(|n| mine(n))
                    .map(|n| dir.join(n).display().to_string()),
            );
        }
    }
    out
}

/// Pid of the launcher (the `ranks` process) of the job with this mark.
pub fn launcher_of(mark: &str) -> Option<u32> {
    processes_with_mark(mark)
        .into_iter()
        .find(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e.ends_with("ranks")))
}

/// Pid of the live process of `rank` in the job with this mark.
pub fn rank_pid(mark: &str, rank: usize) -> Option<u32> {
    let needle = format!("RANKS_RANK={rank}");
    processes_with_mark(mark).into_iter().find(|p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
    })
}

/// Wait (at most `limit`) until `n` ranks of the job with this mark run.
pub fn wait_for_ranks(mark: &str, n: usize, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if (0..n).all(|r| rank_pid(mark, r).is_some()) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Assert the job left no process and no shared-memory segment behind.
pub fn assert_clean(o: &Outcome) {
    // Killed processes can take a moment to disappear from /proc, and an agent on another
    // host removes its files after its ranks are gone: both get the same few seconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let wait_until_empty = |what: &str, list: &dyn Fn() -> Vec<String>| loop {
        let left = list();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what} left behind: {left:?}\n{o:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    wait_until_empty("processes", &|| {
        processes_with_mark(&o.mark)
            .iter()
            .map(u32::to_string)
            .collect()
    });
    wait_until_empty("segments in /dev/shm", &|| segments_of(o.launcher_pid));
}

/// The usual limit for a job in these tests.
pub const LIMIT: Duration = Duration::from_secs(120);

/// Run `ranks-testjob ARGS` on `n` ranks over `transport`: it must succeed, every rank `r`
/// must print `"{expect} rank {r}"`, and nothing may be left behind.
pub fn testjob_ok_on_every_rank(n: usize, transport: &str, args: &[&str], expect: &str) {
    let np = n.to_string();
    let o = run_job(
        &["-n", &np, "--transport", transport],
        "ranks-testjob",
        args,
        LIMIT,
    );
    assert_eq!(o.code, 0, "{args:?} on {n} ranks over {transport}: {o:?}");
    for r in 0..n {
        assert!(
            o.stdout.contains(&format!("{expect} rank {r}")),
            "{args:?} on {n} ranks over {transport}: no word from rank {r}:\n{}",
            o.stdout
        );
    }
    assert_clean(&o);
}
