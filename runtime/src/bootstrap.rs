//! How a process learns its place in the job: the launcher's environment, or a world of one.
//!
//! The launcher sets these variables for every rank (see [`env`]); a program started without
//! them becomes rank 0 of a world of size 1.

use std::path::PathBuf;
use std::sync::Arc;

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::progress::{Core, Tuning};
use crate::transport::{hybrid, local::Local, shm::Shm, uds::Uds, Transport};

/// Names of the environment variables the launcher passes to each rank.
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
}

fn var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        Error::Bootstrap(format!(
            "{name} is not set although {} is; was this process started by `ranks run`?",
            env::SIZE
        ))
    })
}

fn parse<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.trim()
        .parse()
        .map_err(|_| Error::Bootstrap(format!("{name}={v:?} is not a valid number")))
}

fn init_logging() {
    if let Ok(filter) = std::env::var("RANKS_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Tie this process's life to the launcher's: if the launcher dies, so do we.
fn die_with_launcher() {
    let Ok(pid) = std::env::var(env::LAUNCHER_PID) else {
        return;
    };
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if parent.map(|p| p.to_string()) != Some(pid) {
        return; // started through a wrapper; the launcher kills our process group instead
    }
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // The launcher may have died before the call above took effect.
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        std::process::exit(137);
    }
}

pub(crate) fn world_from_env() -> Result<Comm> {
    init_logging();
    let Ok(size) = std::env::var(env::SIZE) else {
        let core = Core::new(0, 1, Box::new(Local::default()), Tuning::from_env(1, false));
        return Ok(Comm::world(Arc::new(core)));
    };
    let size: usize = parse(env::SIZE, &size)?;
    let rank: usize = parse(env::RANK, &var(env::RANK)?)?;
    if size == 0 || rank >= size {
        return Err(Error::Bootstrap(format!(
            "rank {rank} is outside a world of size {size}"
        )));
    }
    die_with_launcher();
    let transport = std::env::var(env::TRANSPORT).unwrap_or_else(|_| "shm".into());
    let (mut local_ranks, mut io_threads) = (size, false);
    let t: Box<dyn Transport> = match transport.as_str() {
        "shm" => Box::new(Shm::attach(&PathBuf::from(var(env::SHM)?), rank, size)?),
        "uds" => Box::new(Uds::connect(&PathBuf::from(var(env::DIR)?), rank, size)?),
        "quic" => Box::new(crate::transport::quic::Quic::connect(
            &PathBuf::from(var(env::DIR)?),
            rank,
            size,
            &[],
            None,
        )?),
        "auto" => {
            let hosts = hybrid::parse_hosts(&var(env::HOSTS)?, size)?;
            let here = hosts.iter().filter(|h| **h == hosts[rank]).count();
            local_ranks = here;
            io_threads = here == 1 && size > 1;
            let seg = std::env::var(env::SHM).ok().map(PathBuf::from);
            Box::new(hybrid::Hybrid::connect(
                seg.as_deref(),
                &PathBuf::from(var(env::DIR)?),
                rank,
                &hosts,
            )?)
        }
        other => {
            return Err(Error::Bootstrap(format!(
                "unknown transport {other:?} in {} (expected shm, uds, quic or auto)",
                env::TRANSPORT
            )))
        }
    };
    tracing::debug!(rank, size, transport = t.name(), "joined the job");
    if t.name() == "quic" {
        io_threads = true;
    }
    let tuning = Tuning::from_env(local_ranks, io_threads);
    let core = Core::new(rank, size, t, tuning);
    Ok(Comm::world(Arc::new(core)))
}
