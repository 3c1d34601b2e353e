//! The ranks of a job on one host: spawn them, forward their output, watch them exit, and own
//! what they share there (segment, job directory). The launcher runs one for its own host; an
//! agent runs one on every other host.

use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ranks::board::{Board, Ending};
use ranks::config::{Placement, TransportKind};
use ranks::transport::shm::{RankState, Segment};
use rustix::process::{kill_process_group, Pid, Signal};

use crate::output::forward;
use crate::proto::{NodeSpec, Status};

/// What a node tells its owner.
pub enum NodeEvent {
    Started(usize, u32),
    Exited(usize, Status),
    /// A rank published its QUIC address (jobs spanning hosts only).
    Address(usize, String),
}

/// Where output lines go: `(rank, is_stderr, line)`.
pub type OutputSink = Arc<dyn Fn(usize, bool, &[u8]) + Send + Sync>;

/// Find PROGRAM the way a shell would: a path as given, or a name on PATH.
pub fn resolve_program(prog: &str) -> Result<PathBuf, String> {
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

/// Remove what jobs whose launcher or agent died left on this host, saying so (`who`
/// starts the line).
pub fn reap_stale(who: &str) {
    for dir in [PathBuf::from("/dev/shm"), std::env::temp_dir()] {
        for p in ranks::transport::shm::reap_stale(&dir) {
            crate::say!("{who}: removed {} left by a job that died", p.display());
        }
    }
}

/// Whether process `pid` is stopped by a signal (or a debugger), from /proc.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state == 'T' || state == 't')
        })
        .unwrap_or(false)
}

pub fn ending(s: Status) -> Ending {
    match s {
        Status::Code(c) => Ending::Code(c),
        Status::Signal(sig) => Ending::Signal(sig),
        Status::Unknown => Ending::Unknown,
    }
}

pub fn status_of(s: &std::process::ExitStatus) -> Status {
    match (s.code(), s.signal()) {
        (Some(c), _) => Status::Code(c),
        (None, Some(sig)) => Status::Signal(sig),
        _ => Status::Unknown,
    }
}

/// What the node holds that must go away at the end, whatever happens.
struct Resources {
    segment: Option<Arc<Segment>>,
    board: Option<Arc<Board>>,
    dir: Option<PathBuf>,
    /// Where the ranks write their traces (`--trace`).
    trace_dir: Option<PathBuf>,
    /// File-name prefix of everything the ranks may create in /dev/shm.
    shm_prefix: String,
}

impl Drop for Resources {
    fn drop(&mut self) {
        // The last reference removes the file (waiters hold clones until they end).
        self.segment.take();
        self.board.take();
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&self.shm_prefix))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for d in [self.dir.take(), self.trace_dir.take()]
            .into_iter()
            .flatten()
        {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub struct Node {
    /// The world ranks this host runs.
    ranks: Vec<usize>,
    /// `(rank, pid, running)` of every rank started here.
    procs: Arc<Mutex<Vec<(usize, u32, bool)>>>,
    waiters: Vec<JoinHandle<()>>,
    forwarders: Vec<JoinHandle<()>>,
    watcher: Option<JoinHandle<()>>,
    stop_watch: Arc<std::sync::atomic::AtomicBool>,
    res: Resources,
}

impl Node {
    /// Prepare the host's shared resources and start its ranks. `Err` when nothing could be
    /// started; a rank that fails to start after others did is reported as exit code 127.
    pub fn start(
        spec: &NodeSpec,
        program: &Path,
        bind: Option<String>,
        events: Sender<NodeEvent>,
        output: OutputSink,
    ) -> Result<Node, String> {
        let multi_host = spec.hosts.iter().any(|h| *h != spec.hosts[0]);
        // Names on this host carry the pid of the process that owns them first, so stale
        // ones are recognised (see `shm::reap_stale`), and the host index, so hosts sharing
        // a file system (or namespaces of one machine) never collide.
        let local_id = if multi_host {
            format!("{}-{}-h{}", std::process::id(), spec.job, spec.host_index)
        } else {
            spec.job.clone()
        };
        let mut res = Resources {
            segment: None,
            board: None,
            dir: None,
            trace_dir: None,
            shm_prefix: format!("ranks-{local_id}"),
        };
        let mut place = Placement {
            rank: 0,
            size: spec.hosts.len(),
            job: local_id.clone(),
            transport: spec.transport,
            shm: None,
            dir: None,
            board: None,
            launcher_pid: Some(std::process::id()),
            hosts: None,
            hostname: Some(spec.host_name.clone()),
            bind,
            ports: spec.ports.as_deref().and_then(ranks::config::port_range),
        };
        // Index of each local rank in this host's segment.
        let seg_index: Vec<usize> = if spec.transport == TransportKind::Shm {
            spec.ranks.clone()
        } else {
            (0..spec.ranks.len()).collect()
        };
        let seg_size = match spec.transport {
            TransportKind::Shm => Some(spec.hosts.len()),
            TransportKind::Hybrid if spec.ranks.len() > 1 => Some(spec.ranks.len()),
            _ => None,
        };
        if let Some(n) = seg_size {
            let path = PathBuf::from(format!("/dev/shm/ranks-{local_id}"));
            let seg = Segment::create(&path, n).map_err(|e| e.to_string())?;
            place.shm = Some(path);
            res.segment = Some(Arc::new(seg));
        }
        // Every host has a board with a slot for every rank of the job.
        let board_path = PathBuf::from(format!("/dev/shm/ranks-{local_id}-board"));
        let board = Board::create(&board_path, spec.hosts.len()).map_err(|e| e.to_string())?;
        res.board = Some(Arc::new(board));
        place.board = Some(board_path);
        if spec.transport != TransportKind::Shm {
            let dir = std::env::temp_dir().join(format!("ranks-{local_id}"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            res.dir = Some(dir.clone());
            if !spec.credentials.is_empty() {
                ranks::transport::quic::write_credentials(&dir, &spec.credentials)
                    .map_err(|e| e.to_string())?;
            }
            place.dir = Some(dir);
        }
        if spec.transport == TransportKind::Hybrid {
            place.hosts = Some(spec.hosts.clone());
        }
        if spec.trace {
            let dir = std::env::temp_dir().join(format!("ranks-{local_id}-trace"));
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            res.trace_dir = Some(dir);
        }

        let procs = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        let mut forwarders = Vec::new();
        for (i, &rank) in spec.ranks.iter().enumerate() {
            let mut cmd = Command::new(program);
            place.rank = rank;
            cmd.args(&spec.args)
                .envs(place.to_env())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            for (k, v) in &spec.env {
                cmd.env(k, v);
            }
            if let Some(dir) = &res.trace_dir {
                cmd.env(ranks::config::env::TRACE, trace_file(dir, rank));
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) if i == 0 => {
                    return Err(format!(
                        "could not start rank {rank} ({}): {e}",
                        program.display()
                    ))
                }
                Err(e) => {
                    crate::say!(
                        "ranks: could not start rank {rank} ({}): {e}",
                        program.display()
                    );
                    if let Some(b) = &res.board {
                        b.set_ended(rank, Ending::Code(127));
                    }
                    let _ = events.send(NodeEvent::Exited(rank, Status::Code(127)));
                    continue;
                }
            };
            let pid = child.id();
            procs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((rank, pid, true));
            let _ = events.send(NodeEvent::Started(rank, pid));
            let out = child.stdout.take().expect("piped");
            let err = child.stderr.take().expect("piped");
            forwarders.push(forward(out, rank, false, output.clone()));
            forwarders.push(forward(err, rank, true, output.clone()));
            let events = events.clone();
            let seg = res.segment.clone();
            let board = res.board.clone();
            let procs = procs.clone();
            let idx = seg_index[i];
            waiters.push(std::thread::spawn(move || {
                let st = child.wait();
                let status = match &st {
                    Ok(s) => status_of(s),
                    Err(_) => Status::Unknown,
                };
                {
                    let mut p = procs.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(e) = p.iter_mut().find(|e| e.0 == rank) {
                        e.2 = false;
                    }
                    // Take down anything the rank left behind in its process group.
                    if let Some(p) = Pid::from_raw(pid as i32) {
                        let _ = kill_process_group(p, Signal::KILL);
                    }
                }
                // The launcher hears of the end before any other rank can (they learn it from
                // the board and the segment): a rank failing because of this one is then
                // always recorded after it, so the first failure the launcher sees is the cause.
                let _ = events.send(NodeEvent::Exited(rank, status));
                if let Some(board) = &board {
                    board.set_ended(rank, ending(status));
                }
                if let Some(seg) = &seg {
                    let ok = matches!(status, Status::Code(0));
                    seg.set_state(
                        idx,
                        if ok {
                            RankState::Exited
                        } else {
                            RankState::Failed
                        },
                    );
                }
            }));
        }

        // In a job spanning hosts, the ranks' QUIC addresses go to the other hosts.
        let stop_watch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = match (&res.dir, multi_host) {
            (Some(dir), true) => {
                let (dir, ranks, stop) = (dir.clone(), spec.ranks.clone(), stop_watch.clone());
                Some(std::thread::spawn(move || {
                    watch_addresses(&dir, ranks, &stop, &events)
                }))
            }
            _ => None,
        };
        Ok(Node {
            ranks: spec.ranks.clone(),
            procs,
            waiters,
            forwarders,
            watcher,
            stop_watch,
            res,
        })
    }

    /// Signal every rank of this host that still runs (its whole process group).
    pub fn signal(&self, sig: Signal) {
        let p = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for &(_, pid, running) in p.iter() {
            if running {
                if let Some(p) = Pid::from_raw(pid as i32) {
                    let _ = kill_process_group(p, sig);
                }
            }
        }
    }

    /// Record that a rank of another host ended, and wake the ranks here so waits on it end.
    pub fn rank_ended(&self, rank: usize, status: Status) {
        if let Some(board) = &self.res.board {
            board.set_ended(rank, ending(status));
        }
        if let Some(seg) = &self.res.segment {
            seg.wake_all();
        }
    }

    /// What each running rank of this host is doing: blocked in a call of ours (its board
    /// record), stopped by a signal, or running.
    pub fn blocked(&self) -> Vec<(usize, crate::diagnose::View)> {
        use crate::diagnose::View;
        let p = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        p.iter()
            .filter(|e| e.2)
            .map(|&(rank, pid, _)| {
                let rec = self.res.board.as_ref().and_then(|b| b.blocked(rank));
                let view = match (stopped(pid), rec) {
                    (true, rec) => View::Stopped(rec),
                    (false, Some(b)) => View::Blocked(b),
                    (false, None) => View::Running,
                };
                (rank, view)
            })
            .collect()
    }

    /// Make other hosts' rank addresses known to the ranks here.
    pub fn add_addresses(&self, list: &[(usize, String)]) {
        let Some(dir) = &self.res.dir else { return };
        for (rank, addr) in list {
            let tmp = dir.join(format!("r{rank}.addr.in"));
            if std::fs::write(&tmp, addr).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join(format!("r{rank}.addr")));
            }
        }
    }

    /// After every rank exited: collect the threads, forward what output is left (a stray
    /// descendant holding a pipe open does not keep us waiting more than 2 s), clean up.
    /// Returns the traces the ranks wrote (`--trace`): `(rank, encoded RankTrace)`.
    pub fn finish(self) -> Vec<(usize, Vec<u8>)> {
        self.stop_watch
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for w in self.waiters {
            let _ = w.join();
        }
        if let Some(w) = self.watcher {
            let _ = w.join();
        }
        let drain_until = Instant::now() + Duration::from_secs(2);
        for f in self.forwarders {
            while !f.is_finished() && Instant::now() < drain_until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if f.is_finished() {
                let _ = f.join();
            }
        }
        let mut traces = Vec::new();
        if let Some(dir) = &self.res.trace_dir {
            for &rank in &self.ranks {
                if let Ok(bytes) = std::fs::read(trace_file(dir, rank)) {
                    traces.push((rank, bytes));
                }
            }
        }
        drop(self.res);
        traces
    }
}

fn trace_file(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("r{rank}.trace"))
}

/// Report each local rank's address file once it appears.
fn watch_addresses(
    dir: &Path,
    mut ranks: Vec<usize>,
    stop: &std::sync::atomic::AtomicBool,
    events: &Sender<NodeEvent>,
) {
    while !ranks.is_empty() && !stop.load(std::sync::atomic::Ordering::SeqCst) {
        ranks.retain(
            |&r| match std::fs::read_to_string(dir.join(format!("r{r}.addr"))) {
                Ok(a) if !a.trim().is_empty() => {
                    let _ = events.send(NodeEvent::Address(r, a.trim().to_string()));
                    false
                }
                _ => true,
            },
        );
        std::thread::sleep(Duration::from_millis(3));
    }
}
