//! Every `RANKS_*` setting, parsed once into types, shared by the launcher and the runtime.
//!
//! The launcher writes a rank's [`Placement`] into its environment with
//! [`Placement::to_env`]; the rank reads everything back with [`Config::from_env`] when it
//! joins. Tuning knobs are read in the same place, so a malformed value is one clear error
//! at start-up instead of a silently ignored setting somewhere later.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Names of the environment variables.
pub mod env {
    /// This process's rank in the world.
    pub const RANK: &str = "RANKS_RANK";
    /// Number of ranks in the world.
    pub const SIZE: &str = "RANKS_SIZE";
    /// Job id (unique per launch).
    pub const JOB: &str = "RANKS_JOB";
    /// `shm`, `uds`, `quic` or `auto` (shared memory within a host, QUIC across hosts).
    pub const TRANSPORT: &str = "RANKS_TRANSPORT";
    /// Path of the job's shared-memory segment.
    pub const SHM: &str = "RANKS_SHM";
    /// Path of the host's job board (how ranks ended, what each is blocked in).
    pub const BOARD: &str = "RANKS_BOARD";
    /// Directory for the job's Unix sockets.
    pub const DIR: &str = "RANKS_DIR";
    /// Pid of the launcher or agent that started the rank (ranks die with it).
    pub const LAUNCHER_PID: &str = "RANKS_LAUNCHER_PID";
    /// With transport `auto`: the host index of every rank, `0,0,1,1`.
    pub const HOSTS: &str = "RANKS_HOSTS";
    /// The name of this rank's host in the job (what `split_by_host` groups by).
    pub const HOSTNAME: &str = "RANKS_HOSTNAME";
    /// The IP address QUIC endpoints bind to (127.0.0.1 when unset).
    pub const BIND: &str = "RANKS_BIND";
    /// Ports QUIC endpoints may bind to, `LOW-HIGH` (any when unset).
    pub const PORTS: &str = "RANKS_PORTS";
    /// Largest payload accepted from a peer, bytes.
    pub const MAX_MESSAGE: &str = "RANKS_MAX_MESSAGE";
    /// Payloads of at least this many bytes go by rendezvous.
    pub const RENDEZVOUS_THRESHOLD: &str = "RANKS_RENDEZVOUS_THRESHOLD";
    /// How long a waiter spins before it yields, microseconds.
    pub const SPIN_US: &str = "RANKS_SPIN_US";
    /// How many times a waiter yields before it sleeps.
    pub const YIELDS: &str = "RANKS_YIELDS";
    /// Broadcasts of at least this many bytes use scatter + all-gather.
    pub const BCAST_LARGE: &str = "RANKS_BCAST_LARGE";
    /// All-reductions of at least this many bytes use reduce-scatter + all-gather.
    pub const ALLREDUCE_LARGE: &str = "RANKS_ALLREDUCE_LARGE";
    /// The most bytes QUIC keeps in flight to one peer (a cap on its congestion window);
    /// `0`: no cap.
    pub const QUIC_WINDOW: &str = "RANKS_QUIC_WINDOW";
    /// `0` turns off cross-memory attach (rendezvous payloads are streamed).
    pub const CMA: &str = "RANKS_CMA";
    /// Testing knob: `1` refuses every pull, as a kernel forbidding cross-memory attach would.
    pub const TEST_REFUSE_PULL: &str = "RANKS_TEST_REFUSE_PULL";
    /// Pulls of at least this many bytes are shared with the sender (it writes the second
    /// half if it is in the library to see the offer); `0`: never.
    pub const SHARE_PULL: &str = "RANKS_SHARE_PULL";
    /// Testing knob: `1` makes a receiver that offered the sender a part of a pull wait for
    /// the sender to write it, instead of taking the offer back when its own part is done.
    pub const TEST_AWAIT_PUSH: &str = "RANKS_TEST_AWAIT_PUSH";
    /// Testing knob: the longest a sleeping waiter sleeps before it looks again without
    /// being woken, in milliseconds (default 50). Long naps turn a lost wakeup into a hang.
    pub const TEST_NAP_MS: &str = "RANKS_TEST_NAP_MS";
    /// Testing knob: `1` makes the core's lock fence at every release, as it does where the
    /// kernel has no `membarrier` (see `lock.rs`).
    pub const TEST_FENCED_LOCK: &str = "RANKS_TEST_FENCED_LOCK";
    pub const COLL_HIER: &str = "RANKS_COLL_HIER";
    pub const COLL_SHM: &str = "RANKS_COLL_SHM";
    pub const TEST_HOSTS: &str = "RANKS_TEST_HOSTS";
    /// Testing knob: `RANK:MICROS` makes that rank wait so long between meeting the others
    /// of a shared-memory all-reduction and reading their operands (`crate::host_sync`).
    pub const TEST_SLOW_READ: &str = "RANKS_TEST_SLOW_READ";
    /// A `tracing` filter (`debug`, `ranks=trace`, ...): logging to stderr.
    pub const LOG: &str = "RANKS_LOG";
    /// `1`: report the progress of `Pool::map` and `imap` to the launcher (`--progress`).
    pub const PROGRESS: &str = "RANKS_PROGRESS";
    /// File a rank writes its trace to when it exits (`ranks run --trace`).
    pub const TRACE: &str = "RANKS_TRACE";
    /// Launcher: milliseconds between SIGTERM and SIGKILL when a job is stopped.
    pub const KILL_GRACE_MS: &str = "RANKS_KILL_GRACE_MS";
}

/// How the ranks of a job talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TransportKind {
    /// Shared-memory rings, one host.
    Shm,
    /// Unix-domain sockets, one host.
    Uds,
    /// QUIC between every pair.
    Quic,
    /// Shared memory within a host, QUIC across hosts (`auto` in the environment).
    Hybrid,
}

impl TransportKind {
    /// The name in `RANKS_TRANSPORT`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Shm => "shm",
            TransportKind::Uds => "uds",
            TransportKind::Quic => "quic",
            TransportKind::Hybrid => "auto",
        }
    }

    /// Whether the job needs a shared-memory segment on each host with more than one rank.
    pub fn uses_segment(self) -> bool {
        matches!(self, TransportKind::Shm | TransportKind::Hybrid)
    }

    /// Whether the transport carries credentials for QUIC.
    pub fn uses_quic(self) -> bool {
        matches!(self, TransportKind::Quic | TransportKind::Hybrid)
    }
}

impl FromStr for TransportKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "shm" => TransportKind::Shm,
            "uds" => TransportKind::Uds,
            "quic" => TransportKind::Quic,
            "auto" => TransportKind::Hybrid,
            other => {
                return Err(Error::Bootstrap(format!(
                    "unknown transport {other:?} in {} (expected shm, uds, quic or auto)",
                    env::TRANSPORT
                )))
            }
        })
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a rank stands in its job: what the launcher tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub rank: usize,
    pub size: usize,
    pub job: String,
    pub transport: TransportKind,
    pub shm: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub board: Option<PathBuf>,
    pub launcher_pid: Option<u32>,
    /// Host index of every rank (transport `auto`).
    pub hosts: Option<Vec<u32>>,
    pub hostname: Option<String>,
    pub bind: Option<String>,
    pub ports: Option<(u16, u16)>,
}

impl Placement {
    /// The variables that give a rank this placement.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![
            (env::RANK, self.rank.to_string()),
            (env::SIZE, self.size.to_string()),
            (env::JOB, self.job.clone()),
            (env::TRANSPORT, self.transport.name().to_string()),
        ];
        let path = |p: &PathBuf| p.display().to_string();
        if let Some(p) = &self.shm {
            v.push((env::SHM, path(p)));
        }
        if let Some(p) = &self.dir {
            v.push((env::DIR, path(p)));
        }
        if let Some(p) = &self.board {
            v.push((env::BOARD, path(p)));
        }
        if let Some(p) = self.launcher_pid {
            v.push((env::LAUNCHER_PID, p.to_string()));
        }
        if let Some(h) = &self.hosts {
            let h: Vec<String> = h.iter().map(u32::to_string).collect();
            v.push((env::HOSTS, h.join(",")));
        }
        if let Some(h) = &self.hostname {
            v.push((env::HOSTNAME, h.clone()));
        }
        if let Some(b) = &self.bind {
            v.push((env::BIND, b.clone()));
        }
        if let Some((lo, hi)) = self.ports {
            v.push((env::PORTS, format!("{lo}-{hi}")));
        }
        v
    }

    fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Placement>> {
        let Some(size) = get(env::SIZE) else {
            return Ok(None);
        };
        let need = |name: &str| {
            get(name).ok_or_else(|| {
                Error::Bootstrap(format!(
                    "{name} is not set although {} is; was this process started by `ranks run`?",
                    env::SIZE
                ))
            })
        };
        let size: usize = number(env::SIZE, &size)?;
        let rank: usize = number(env::RANK, &need(env::RANK)?)?;
        if size == 0 || rank >= size {
            return Err(Error::Bootstrap(format!(
                "rank {rank} is outside a world of size {size}"
            )));
        }
        let transport = match get(env::TRANSPORT) {
            Some(t) => t.parse()?,
            None => TransportKind::Shm,
        };
        let hosts = match get(env::HOSTS) {
            Some(h) => Some(parse_hosts(&h, size)?),
            None if transport == TransportKind::Hybrid => {
                return Err(Error::Bootstrap(format!(
                    "{} is needed with transport auto",
                    env::HOSTS
                )))
            }
            None => None,
        };
        Ok(Some(Placement {
            rank,
            size,
            job: get(env::JOB).unwrap_or_default(),
            transport,
            shm: get(env::SHM).map(PathBuf::from),
            dir: get(env::DIR).map(PathBuf::from),
            board: get(env::BOARD).map(PathBuf::from),
            launcher_pid: get(env::LAUNCHER_PID)
                .map(|p| number(env::LAUNCHER_PID, &p))
                .transpose()?,
            hosts,
            hostname: get(env::HOSTNAME),
            bind: get(env::BIND).filter(|b| !b.is_empty()),
            ports: get(env::PORTS)
                .filter(|p| !p.is_empty())
                .map(|p| parse_ports(&p))
                .transpose()?,
        }))
    }

    /// The required path of a transport (`RANKS_SHM`, `RANKS_DIR`).
    pub fn need_path<'a>(&self, p: &'a Option<PathBuf>, name: &str) -> Result<&'a PathBuf> {
        p.as_ref().ok_or_else(|| {
            Error::Bootstrap(format!(
                "{name} is not set although transport {} needs it",
                self.transport
            ))
        })
    }
}

/// Knobs of the protocol, waiting and collectives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Largest payload accepted from a peer.
    pub max_message: u64,
    /// Payloads at least this big go by rendezvous (pulled by the receiver) when possible;
    /// `None`: decided at start-up from the size of the shared-memory rings.
    pub rendezvous_threshold: Option<usize>,
    /// How long a waiter spins before it yields and sleeps; `None`: decided at start-up
    /// from how many ranks share the cores.
    pub spin: Option<Duration>,
    /// How many times a waiter yields the CPU before it sleeps.
    pub yields: u32,
    /// Broadcasts of at least this many bytes use scatter + ring all-gather.
    pub bcast_large: usize,
    /// All-reductions of at least this many bytes use the ring algorithm.
    pub allreduce_large: usize,
    /// Cross-memory attach allowed (`RANKS_CMA=0` turns it off).
    pub cma: bool,
    /// Testing: refuse every pull.
    pub refuse_pull: bool,
    /// Pulls of at least this many bytes are shared with the sender; 0: never.
    pub share_pull: usize,
    /// Testing: a receiver waits for the sender to write the part it offered.
    pub await_push: bool,
    /// Testing: the longest nap of a sleeping waiter (`None`: 50 ms).
    pub nap: Option<Duration>,
    /// Testing: the core's lock fences at every release.
    pub fenced_lock: bool,
    /// Two-level collectives when a communicator spans hosts (`RANKS_COLL_HIER=0`: flat).
    pub two_level: bool,
    /// Barriers of communicators whose ranks share one host's memory meet in it, without
    /// messages (`RANKS_COLL_SHM=0`: by messages).
    pub host_sync: bool,
    /// Testing: the host of every rank, as numbers (`RANKS_TEST_HOSTS=0,0,1,1`), to run
    /// two-level collectives on one machine.
    pub test_hosts: Option<Vec<u32>>,
    /// Testing: a rank that reads shared all-reduction operands late, and how late.
    pub test_slow_read: Option<(usize, Duration)>,
    /// The cap on QUIC's congestion window, bytes (`RANKS_QUIC_WINDOW`; `None`: Cubic's
    /// own window, uncapped).
    pub quic_window: Option<u64>,
}

/// The least `RANKS_QUIC_WINDOW` other than 0: a window below a few packets would stall
/// every connection.
pub const MIN_QUIC_WINDOW: u64 = 64 << 10;

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_message: 1 << 32,
            rendezvous_threshold: None,
            spin: None,
            yields: 16,
            bcast_large: 512 << 10,
            allreduce_large: 64 << 10,
            cma: true,
            refuse_pull: false,
            share_pull: 128 << 10,
            await_push: false,
            nap: None,
            fenced_lock: false,
            two_level: true,
            host_sync: true,
            test_hosts: None,
            test_slow_read: None,
            // 1 MiB in flight: 10 GB/s at 100 us round trips, 1 GB/s at 1 ms (see
            // `transport/window.rs`).
            quic_window: Some(1 << 20),
        }
    }
}

/// Everything a process reads from its environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `None` outside the launcher: a world of one.
    pub placement: Option<Placement>,
    pub tuning: Tuning,
    /// `RANKS_LOG`.
    pub log: Option<String>,
    /// `RANKS_KILL_GRACE_MS` (the launcher's).
    pub kill_grace: Duration,
    /// `RANKS_TRACE`: record a trace and write it there at exit.
    pub trace: Option<PathBuf>,
    /// `RANKS_PROGRESS=1`: report pools' progress to the launcher.
    pub progress: bool,
    /// `RANKS_BIND` and `RANKS_PORTS` for a rank started without the launcher (srun): where
    /// its QUIC endpoint binds.
    pub bind: Option<String>,
    pub ports: Option<(u16, u16)>,
}

impl Config {
    /// This process's settings, read from its environment the first time they are asked for.
    pub fn global() -> Result<&'static Config> {
        static CFG: std::sync::OnceLock<std::result::Result<Config, String>> =
            std::sync::OnceLock::new();
        // The message alone: it is a bootstrap error again below, not one inside another.
        let read = || {
            Config::from_env().map_err(|e| match e {
                Error::Bootstrap(m) => m,
                other => other.to_string(),
            })
        };
        match CFG.get_or_init(read) {
            Ok(c) => Ok(c),
            Err(e) => Err(Error::Bootstrap(e.clone())),
        }
    }

    /// Read the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_vars(&|k| std::env::var(k).ok())
    }

    /// Read settings through `get` (the environment, or a map in tests).
    pub fn from_vars(get: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
        let d = Tuning::default();
        // A setting read by `parse`, `None` when not set (or set empty).
        let parsed = |name: &str, parse: fn(&str, &str) -> Result<u64>| match get(name) {
            Some(v) if !v.trim().is_empty() => parse(name, &v).map(Some),
            _ => Ok(None),
        };
        // A number.
        let opt = |name: &str| parsed(name, number::<u64>);
        let num = |name: &str, default: u64| Ok::<u64, Error>(opt(name)?.unwrap_or(default));
        // A size in bytes (`4M` allowed), `None` when not set (or set empty).
        let opt_size = |name: &str| parsed(name, size);
        let bytes = |name: &str, default: u64| Ok::<u64, Error>(opt_size(name)?.unwrap_or(default));
        let flag = |name: &str, on: &str| get(name).is_some_and(|v| v.trim() == on);
        let tuning = Tuning {
            max_message: bytes(env::MAX_MESSAGE, d.max_message)?,
            rendezvous_threshold: opt_size(env::RENDEZVOUS_THRESHOLD)?.map(|n| n as usize),
            spin: opt(env::SPIN_US)?.map(Duration::from_micros),
            yields: u32::try_from(num(env::YIELDS, u64::from(d.yields))?)
                .map_err(|_| Error::Bootstrap(format!("{} is too large", env::YIELDS)))?,
            bcast_large: bytes(env::BCAST_LARGE, d.bcast_large as u64)? as usize,
            allreduce_large: bytes(env::ALLREDUCE_LARGE, d.allreduce_large as u64)? as usize,
            cma: !flag(env::CMA, "0"),
            refuse_pull: flag(env::TEST_REFUSE_PULL, "1"),
            share_pull: bytes(env::SHARE_PULL, d.share_pull as u64)? as usize,
            await_push: flag(env::TEST_AWAIT_PUSH, "1"),
            nap: opt(env::TEST_NAP_MS)?.map(Duration::from_millis),
            fenced_lock: flag(env::TEST_FENCED_LOCK, "1"),
            two_level: !flag(env::COLL_HIER, "0"),
            host_sync: !flag(env::COLL_SHM, "0"),
            test_hosts: match get(env::TEST_HOSTS) {
                Some(h) if !h.trim().is_empty() => Some(
                    h.split(',')
                        .map(|x| number::<u32>(env::TEST_HOSTS, x))
                        .collect::<Result<Vec<u32>>>()?,
                ),
                _ => None,
            },
            test_slow_read: match get(env::TEST_SLOW_READ) {
                Some(v) if !v.trim().is_empty() => {
                    let (r, us) = v.split_once(':').ok_or_else(|| {
                        Error::Bootstrap(format!(
                            "{}={v:?} is not RANK:MICROS",
                            env::TEST_SLOW_READ
                        ))
                    })?;
                    Some((
                        number::<usize>(env::TEST_SLOW_READ, r)?,
                        Duration::from_micros(number::<u64>(env::TEST_SLOW_READ, us)?),
                    ))
                }
                _ => None,
            },
            quic_window: match bytes(env::QUIC_WINDOW, d.quic_window.unwrap_or(0))? {
                0 => None,
                w if w < MIN_QUIC_WINDOW => {
                    return Err(Error::Bootstrap(format!(
                        "{}={w} is below the least window, {MIN_QUIC_WINDOW} bytes (0: no cap)",
                        env::QUIC_WINDOW
                    )))
                }
                w => Some(w),
            },
        };
        Ok(Config {
            placement: Placement::from_vars(get)?,
            tuning,
            log: get(env::LOG),
            kill_grace: Duration::from_millis(num(env::KILL_GRACE_MS, 1000)?),
            progress: flag(env::PROGRESS, "1"),
            trace: get(env::TRACE)
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            bind: get(env::BIND).filter(|b| !b.is_empty()),
            ports: get(env::PORTS)
                .filter(|p| !p.is_empty())
                .map(|p| parse_ports(&p))
                .transpose()?,
        })
    }
}

/// The line a rank that calls `abort(code)` writes on its stderr, which tells the launcher
/// the job's exit code.
pub fn abort_line(rank: usize, code: i32) -> String {
    format!("ranks: rank {rank} called abort({code})")
}

/// The line a rank writes on stderr to report the progress of a pool's batch `id`; the
/// launcher draws it as a progress bar instead of printing it.
pub fn progress_line(rank: usize, id: u64, done: usize, total: usize, label: &str) -> String {
    format!("ranks: rank {rank} progress {id} {done}/{total} {label}")
}

/// A progress line written by `rank`: `(id, done, total, label)`.
pub fn parse_progress_line(rank: usize, line: &[u8]) -> Option<(u64, usize, usize, String)> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let rest = line.strip_prefix(&format!("ranks: rank {rank} progress "))?;
    let mut it = rest.splitn(3, ' ');
    let id = it.next()?.parse().ok()?;
    let (done, total) = it.next()?.split_once('/')?;
    let (done, total) = (done.parse().ok()?, total.parse().ok()?);
    let label = it.next().unwrap_or("").to_string();
    (done <= total).then_some((id, done, total, label))
}

/// The code of an abort line written by `rank` (`line` with or without its newline).
pub fn parse_abort_line(rank: usize, line: &[u8]) -> Option<u8> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let rest = line.strip_prefix(&format!("ranks: rank {rank} called abort("))?;
    let code: u8 = rest.strip_suffix(')')?.parse().ok()?;
    (code != 0).then_some(code)
}

/// A size in bytes: a number, or one followed by `K`, `M` or `G` (binary multiples: 1024,
/// 1024², 1024³; `Ki`, `KiB` and `KB` say the same), as in `RANKS_QUIC_WINDOW=4M`.
fn size(name: &str, v: &str) -> Result<u64> {
    let bad = || {
        Error::Bootstrap(format!(
            "{name}={v:?} is not a size in bytes (a number, or one with K, M or G, as in 4M)"
        ))
    };
    let t = v.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit
        .strip_suffix("iB")
        .or_else(|| unit.strip_suffix('B').filter(|u| !u.is_empty()))
        .or_else(|| unit.strip_suffix('i'))
        .unwrap_or(unit);
    let shift = match unit {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        _ => return Err(bad()),
    };
    n.checked_mul(1 << shift).ok_or_else(bad)
}

fn number<T: FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::Bootstrap(format!("{name}={v:?} is not a valid number")))
}

/// `RANKS_HOSTS`: the host index of each rank, `0,0,1,1`.
pub fn parse_hosts(v: &str, size: usize) -> Result<Vec<u32>> {
    let hosts: Vec<u32> = v
        .split(',')
        .map(|h| h.trim().parse())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| Error::Bootstrap(format!("{}={v:?} is not a list of numbers", env::HOSTS)))?;
    if hosts.len() != size {
        return Err(Error::Bootstrap(format!(
            "{} names {} hosts for a world of {size}",
            env::HOSTS,
            hosts.len()
        )));
    }
    Ok(hosts)
}

/// `RANKS_PORTS`: `LOW-HIGH` (or a single port) with 0 < LOW <= HIGH.
pub fn parse_ports(p: &str) -> Result<(u16, u16)> {
    port_range(p).ok_or_else(|| {
        Error::Bootstrap(format!(
            "{}={p:?}: expected LOW-HIGH (e.g. 41000-41100)",
            env::PORTS
        ))
    })
}

/// `LOW-HIGH` (or a single port) with 0 < LOW <= HIGH.
pub fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
    (lo <= hi && lo > 0).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_read_back_only_from_their_rank() {
        let l = progress_line(3, 7, 40, 100, "Pool.map");
        assert_eq!(
            parse_progress_line(3, l.as_bytes()),
            Some((7, 40, 100, "Pool.map".to_string()))
        );
        assert_eq!(parse_progress_line(2, l.as_bytes()), None);
        assert_eq!(
            parse_progress_line(3, b"ranks: rank 3 progress 7 101/100 x"),
            None
        );
        assert_eq!(
            parse_progress_line(3, b"ranks: rank 3 progress x 1/2 y"),
            None
        );
        assert_eq!(parse_progress_line(3, b"progress 7 1/2"), None);
    }
    use std::collections::HashMap;

    #[test]
    fn sizes_in_bytes_take_binary_multiples() {
        for (v, n) in [
            ("0", 0),
            ("65536", 65536),
            (" 4M ", 4 << 20),
            ("4m", 4 << 20),
            ("64K", 64 << 10),
            ("64KiB", 64 << 10),
            ("64 KB", 64 << 10),
            ("2Mi", 2 << 20),
            ("1G", 1 << 30),
            ("4GiB", 4 << 30),
        ] {
            assert_eq!(size("X", v).unwrap(), n, "{v:?}");
        }
        for v in ["", "M", "4X", "4 MM", "-1", "1.5M", "4B", "99999999999999G"] {
            let e = size("RANKS_QUIC_WINDOW", v).unwrap_err().to_string();
            assert!(
                e.contains("RANKS_QUIC_WINDOW") && e.contains("not a size in bytes"),
                "{v:?}: {e}"
            );
        }
        let c = cfg(&[
            ("RANKS_QUIC_WINDOW", "4M"),
            ("RANKS_RENDEZVOUS_THRESHOLD", "64K"),
        ]);
        let t = c.unwrap().tuning;
        assert_eq!(t.quic_window, Some(4 << 20));
        assert_eq!(t.rendezvous_threshold, Some(64 << 10));
        let e = cfg(&[("RANKS_MAX_MESSAGE", "lots")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("RANKS_MAX_MESSAGE=\"lots\""), "{e}");
    }

    fn cfg(vars: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_a_world_of_one_with_default_tuning() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.placement, None);
        assert_eq!(c.tuning, Tuning::default());
    }

    #[test]
    fn a_placement_round_trips_through_the_environment() {
        let p = Placement {
            rank: 3,
            size: 4,
            job: "j1".into(),
            transport: TransportKind::Hybrid,
            shm: Some("/dev/shm/ranks-1".into()),
            dir: Some("/tmp/ranks-1".into()),
            board: Some("/dev/shm/ranks-1-board".into()),
            launcher_pid: Some(42),
            hosts: Some(vec![0, 0, 1, 1]),
            hostname: Some("node7".into()),
            bind: Some("10.0.0.1".into()),
            ports: Some((41000, 41100)),
        };
        let vars = p.to_env();
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(cfg(&pairs).unwrap().placement, Some(p));
    }

    #[test]
    fn malformed_settings_are_clear_errors() {
        let bad = [
            vec![(env::SIZE, "4")],
            vec![(env::SIZE, "4"), (env::RANK, "4")],
            vec![(env::SIZE, "x"), (env::RANK, "0")],
            vec![
                (env::SIZE, "2"),
                (env::RANK, "0"),
                (env::TRANSPORT, "carrier pigeon"),
            ],
            vec![(env::SIZE, "2"), (env::RANK, "0"), (env::TRANSPORT, "auto")],
            vec![(env::SIZE, "2"), (env::RANK, "0"), (env::HOSTS, "0,1,2")],
            vec![(env::SIZE, "2"), (env::RANK, "0"), (env::PORTS, "9-3")],
            vec![(env::RENDEZVOUS_THRESHOLD, "lots")],
        ];
        for vars in bad {
            let e = cfg(&vars).expect_err("refused");
            assert!(matches!(e, Error::Bootstrap(_)), "{vars:?}: {e}");
        }
    }

    #[test]
    fn abort_lines_round_trip_and_name_their_rank() {
        assert_eq!(parse_abort_line(3, abort_line(3, 7).as_bytes()), Some(7));
        assert_eq!(
            parse_abort_line(3, b"ranks: rank 3 called abort(7)\n"),
            Some(7)
        );
        assert_eq!(
            parse_abort_line(2, abort_line(3, 7).as_bytes()),
            None,
            "another rank's"
        );
        assert_eq!(
            parse_abort_line(3, b"ranks: rank 3 called abort(300)"),
            None
        );
        assert_eq!(
            parse_abort_line(3, b"x ranks: rank 3 called abort(7)"),
            None
        );
    }

    #[test]
    fn tuning_knobs_are_read() {
        let c = cfg(&[
            (env::RENDEZVOUS_THRESHOLD, "1"),
            (env::SPIN_US, "0"),
            (env::CMA, "0"),
            (env::TEST_REFUSE_PULL, "1"),
            (env::ALLREDUCE_LARGE, "1024"),
            (env::SHARE_PULL, "0"),
            (env::TEST_AWAIT_PUSH, "1"),
            (env::TEST_NAP_MS, "60000"),
            (env::TEST_FENCED_LOCK, "1"),
        ])
        .unwrap();
        assert!(c.tuning.fenced_lock && !Tuning::default().fenced_lock);
        assert_eq!(c.tuning.nap, Some(Duration::from_secs(60)));
        assert_eq!(c.tuning.share_pull, 0);
        assert!(c.tuning.await_push);
        assert_eq!(Tuning::default().share_pull, 128 << 10);
        assert_eq!(c.tuning.rendezvous_threshold, Some(1));
        assert_eq!(c.tuning.spin, Some(Duration::ZERO));
        assert!(!c.tuning.cma && c.tuning.refuse_pull);
        assert_eq!(c.tuning.allreduce_large, 1024);
    }

    #[test]
    fn the_quic_window_is_capped_at_a_mebibyte_unless_told_otherwise() {
        assert_eq!(cfg(&[]).unwrap().tuning.quic_window, Some(1 << 20));
        let w = |v: &str| cfg(&[(env::QUIC_WINDOW, v)]).map(|c| c.tuning.quic_window);
        assert_eq!(w("8388608").unwrap(), Some(8 << 20));
        assert_eq!(w("0").unwrap(), None, "0: no cap");
        assert_eq!(w(" ").unwrap(), Some(1 << 20), "empty: the default");
        assert_eq!(w("65536").unwrap(), Some(MIN_QUIC_WINDOW));
        let small = w("1500").unwrap_err().to_string();
        assert!(small.contains("RANKS_QUIC_WINDOW=1500 is below"), "{small}");
        assert_eq!(w("2M").unwrap(), Some(2 << 20));
        let junk = w("1Q").unwrap_err().to_string();
        assert!(junk.contains("RANKS_QUIC_WINDOW"), "{junk}");
    }
}
