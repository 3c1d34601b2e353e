//! Running a job on this host: spawn the ranks, watch them, apply the exit rules.

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ranks::env;
use ranks::transport::shm::{self, RankState, Segment};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::output::{forward, Stream};
use crate::{RunArgs, TransportKind, EXIT_TIMEOUT};

/// How long ranks get between SIGTERM and SIGKILL when a job is stopped.
fn grace() -> Duration {
    let ms = std::env::var("RANKS_KILL_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Duration::from_millis(ms)
}

enum Event {
    Exited(usize, std::io::Result<ExitStatus>),
    Signal(i32),
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

/// Find PROGRAM the way a shell would: a path as given, or a name on PATH.
fn resolve_program(prog: &OsString) -> Result<PathBuf, String> {
    let p = Path::new(prog);
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.is_empty() {
        return Err("the program name is empty".into());
    }
    if p.components().count() > 1 || p.is_absolute() {
        if !p.exists() {
            return Err(format!("program {} not found", p.display()));
        }
        if !executable(p) {
            return Err(format!("program {} is not an executable file", p.display()));
        }
        return Ok(p.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let cand = dir.join(p);
            if executable(&cand) {
                return Ok(cand);
            }
        }
    }
    Err(format!(
        "program {:?} not found on PATH (give a path like ./{} for a file here)",
        prog,
        p.display()
    ))
}

fn job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), (nanos as u64) & 0xffff_ffff)
}

/// What the job holds that must go away at the end, whatever happens.
struct Resources {
    segment: Option<Segment>,
    sock_dir: Option<PathBuf>,
    /// File-name prefix of everything the job may create in /dev/shm.
    shm_prefix: Option<String>,
}

impl Drop for Resources {
    fn drop(&mut self) {
        self.segment.take(); // removes the file
                             // Shared values and memory blocks the ranks made are named after the job.
        if let Some(prefix) = self.shm_prefix.take() {
            if let Ok(dir) = std::fs::read_dir("/dev/shm") {
                for e in dir.flatten() {
                    if e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with(&prefix))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        if let Some(d) = self.sock_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn describe(status: &ExitStatus) -> (String, u8) {
    if let Some(code) = status.code() {
        let hint = if code == 101 { " (a Rust panic)" } else { "" };
        (format!("exited with code {code}{hint}"), code as u8)
    } else if let Some(sig) = status.signal() {
        (
            format!("was killed by signal {sig} ({})", signal_name(sig)),
            (128 + sig) as u8,
        )
    } else {
        ("ended in an unknown way".into(), 1)
    }
}

/// Run the job; `Ok(exit code)`, or `Err(message)` for a usage error before anything ran.
pub fn run(args: RunArgs) -> Result<u8, String> {
    if args.np == 0 {
        return Err("-n must be at least 1".into());
    }
    if let Some(t) = args.timeout {
        if !(t > 0.0 && t.is_finite()) {
            return Err(format!(
                "--timeout must be a positive number of seconds, not {t}"
            ));
        }
    }
    let mut extra_env = Vec::new();
    for x in &args.env {
        match x.split_once('=') {
            Some((k, v)) if !k.is_empty() => extra_env.push((k.to_string(), v.to_string())),
            None if !x.is_empty() => match std::env::var(x) {
                Ok(v) => extra_env.push((x.clone(), v)),
                Err(_) => return Err(format!("-x {x}: the variable is not set here")),
            },
            _ => return Err(format!("-x {x:?}: expected NAME or NAME=VALUE")),
        }
    }
    let program = resolve_program(&args.program)?;
    let n = args.np;
    let id = job_id();

    for p in shm::reap_stale(Path::new("/dev/shm")) {
        eprintln!("ranks: removed {} left by a job that died", p.display());
    }
    let mut res = Resources {
        segment: None,
        sock_dir: None,
        shm_prefix: Some(format!("ranks-{id}")),
    };
    let mut job_env: Vec<(&str, String)> = vec![
        (env::SIZE, n.to_string()),
        (env::JOB, id.clone()),
        (env::TRANSPORT, args.transport.name().to_string()),
        (env::LAUNCHER_PID, std::process::id().to_string()),
    ];
    match args.transport {
        TransportKind::Shm => {
            let path = PathBuf::from(format!("/dev/shm/ranks-{id}"));
            let seg = Segment::create(&path, n).map_err(|e| e.to_string())?;
            job_env.push((env::SHM, path.display().to_string()));
            res.segment = Some(seg);
        }
        TransportKind::Uds | TransportKind::Quic => {
            let dir = std::env::temp_dir().join(format!("ranks-{id}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            res.sock_dir = Some(dir.clone());
            if args.transport == TransportKind::Quic {
                // Fresh credentials for this job only: a job CA and the ranks' certificate.
                ranks::transport::quic::make_job_credentials(&dir).map_err(|e| e.to_string())?;
            }
            job_env.push((env::DIR, dir.display().to_string()));
        }
    }

    let (tx, rx) = mpsc::channel::<Event>();
    // Catch the signals that should stop the job before any rank exists.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("installing signal handlers: {e}"))?;
    let sig_handle = signals.handle();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        });
    }

    let mut pids: Vec<Option<u32>> = vec![None; n];
    let mut forwarders = Vec::new();
    let mut waiters = Vec::new();
    let mut spawn_error = None;
    for (rank, pid_slot) in pids.iter_mut().enumerate() {
        let mut cmd = Command::new(&program);
        cmd.args(&args.args)
            .env(env::RANK, rank.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for (k, v) in &job_env {
            cmd.env(k, v);
        }
        for (k, v) in &extra_env {
            cmd.env(k, v);
        }
        let mut child: Child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                spawn_error = Some(format!(
                    "could not start rank {rank} ({}): {e}",
                    program.display()
                ));
                break;
            }
        };
        *pid_slot = Some(child.id());
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        forwarders.push(forward(out, rank, Stream::Stdout, args.tag_output));
        forwarders.push(forward(err, rank, Stream::Stderr, args.tag_output));
        let tx = tx.clone();
        waiters.push(std::thread::spawn(move || {
            let st = child.wait();
            let _ = tx.send(Event::Exited(rank, st));
        }));
    }
    drop(tx);

    let started = Instant::now();
    let deadline = args.timeout.map(|t| started + Duration::from_secs_f64(t));
    let mut running: Vec<bool> = pids.iter().map(Option::is_some).collect();
    let mut left = running.iter().filter(|r| **r).count();
    let mut failures: Vec<(usize, u8)> = Vec::new();
    let mut stop_code: Option<u8> = None;
    let mut kill_at: Option<Instant> = None;

    let mut signalled = vec![false; n];
    let stop_all = |running: &[bool], signalled: &mut [bool], sig: Signal| {
        for (r, pid) in pids.iter().enumerate() {
            if let (true, Some(pid)) = (running[r], pid) {
                signalled[r] = true;
                if let Some(p) = Pid::from_raw(*pid as i32) {
                    let _ = kill_process_group(p, sig);
                }
            }
        }
    };

    if let Some(e) = spawn_error {
        eprintln!("ranks: {e}; stopping the job");
        stop_code = Some(crate::EXIT_USAGE);
        stop_all(&running, &mut signalled, Signal::TERM);
        kill_at = Some(Instant::now() + grace());
    }

    while left > 0 {
        let now = Instant::now();
        let mut wake = kill_at.unwrap_or(now + Duration::from_secs(3600));
        if let (Some(d), None) = (deadline, stop_code) {
            wake = wake.min(d);
        }
        let ev = rx.recv_timeout(wake.saturating_duration_since(now));
        match ev {
            Ok(Event::Exited(rank, status)) => {
                running[rank] = false;
                left -= 1;
                // Take down anything the rank left behind in its process group.
                if let Some(p) = pids[rank].and_then(|p| Pid::from_raw(p as i32)) {
                    let _ = kill_process_group(p, Signal::KILL);
                }
                let ok = matches!(&status, Ok(s) if s.success());
                if let Some(seg) = &res.segment {
                    seg.set_state(
                        rank,
                        if ok {
                            RankState::Exited
                        } else {
                            RankState::Failed
                        },
                    );
                }
                // A rank that we signalled and that died of a signal did not fail by itself.
                let ours = signalled[rank] && matches!(&status, Ok(s) if s.signal().is_some());
                if ok || ours {
                    continue;
                }
                let (why, code) = match &status {
                    Ok(s) => describe(s),
                    Err(e) => (format!("could not be waited for: {e}"), 1),
                };
                let pid = pids[rank].unwrap_or(0);
                eprintln!("ranks: rank {rank} (pid {pid}) {why}");
                failures.push((rank, code));
                if stop_code.is_some() || args.keep_going {
                    continue;
                }
                if left > 0 {
                    eprintln!("ranks: stopping the other {left} rank(s)");
                }
                stop_code = Some(code);
                stop_all(&running, &mut signalled, Signal::TERM);
                kill_at = Some(Instant::now() + grace());
            }
            Ok(Event::Signal(sig)) => {
                if stop_code.is_none() {
                    eprintln!("ranks: got {}; stopping the job", signal_name(sig));
                    stop_code = Some((128 + sig) as u8);
                    stop_all(&running, &mut signalled, Signal::TERM);
                    kill_at = Some(Instant::now() + grace());
                } else {
                    // A second Ctrl-C: do not wait for the grace period.
                    stop_all(&running, &mut signalled, Signal::KILL);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if let Some(k) = kill_at {
                    if now >= k {
                        stop_all(&running, &mut signalled, Signal::KILL);
                        kill_at = None;
                    }
                }
                if let (Some(d), None) = (deadline, stop_code) {
                    if now >= d {
                        let still: Vec<String> = (0..n)
                            .filter(|&r| running[r])
                            .map(|r| r.to_string())
                            .collect();
                        eprintln!(
                            "ranks: timeout after {:.1} s; rank(s) still running: {}",
                            args.timeout.unwrap_or(0.0),
                            still.join(", ")
                        );
                        stop_code = Some(EXIT_TIMEOUT);
                        stop_all(&running, &mut signalled, Signal::TERM);
                        kill_at = Some(Instant::now() + grace());
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    for w in waiters {
        let _ = w.join();
    }
    // Output still buffered in the pipes is forwarded; a stray descendant that escaped its
    // rank's process group and keeps a pipe open does not keep the launcher waiting.
    let drain_until = Instant::now() + Duration::from_secs(2);
    for f in forwarders {
        while !f.is_finished() && Instant::now() < drain_until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if f.is_finished() {
            let _ = f.join();
        }
    }
    sig_handle.close();
    drop(res);

    let code = match failures.iter().min_by_key(|(r, _)| *r) {
        Some((_, c)) => *c,
        None => stop_code.unwrap_or(0),
    };
    Ok(code)
}
