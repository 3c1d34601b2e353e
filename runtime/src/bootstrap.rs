//! How a process learns its place in the job: the launcher's environment, or a world of one.
//!
//! The launcher sets the variables of `crate::config` for every rank; a program started
//! without them becomes rank 0 of a world of size 1.

use std::sync::Arc;

use crate::comm::Comm;
use crate::config::{Config, Placement, TransportKind};
use crate::error::Result;
use crate::progress::{Core, Tuning};
use crate::transport::{local::Local, shm::Shm, uds::Uds, Transport};

fn init_logging(filter: Option<&str>) {
    if let Some(filter) = filter {
        use std::io::IsTerminal;
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            // Colour codes only for a terminal, not for the launcher's pipes or a file.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Tie this process's life to the launcher's: if the launcher dies, so do we.
fn die_with_launcher(launcher: Option<u32>) {
    let Some(pid) = launcher else {
        return;
    };
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if parent != Some(pid) {
        return; // started through a wrapper; the launcher kills our process group instead
    }
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    // The launcher may have died before the call above took effect.
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        std::process::exit(137);
    }
}

pub(crate) fn world_from_env() -> Result<Comm> {
    let cfg = Config::global()?;
    init_logging(cfg.log.as_deref());
    if let Some(path) = &cfg.trace {
        let (rank, host) = cfg
            .placement
            .as_ref()
            .map_or_else(|| (0, local_host()), |p| (p.rank, host_of(p)));
        crate::trace::start(path.clone(), rank, host);
    }
    let Some(place) = &cfg.placement else {
        let tuning = Tuning::resolve(&cfg.tuning, 1, false);
        let core = Core::new(0, 1, Box::new(Local::default()), tuning, local_host());
        return Ok(Comm::world(Arc::new(core)));
    };
    let (rank, size) = (place.rank, place.size);
    die_with_launcher(place.launcher_pid);
    #[cfg_attr(not(feature = "quic"), allow(unused_mut))]
    let (mut local_ranks, mut io_threads) = (size, false);
    let t: Box<dyn Transport> = match place.transport {
        TransportKind::Shm => Box::new(Shm::attach(
            place.need_path(&place.shm, crate::config::env::SHM)?,
            rank,
            size,
            &cfg.tuning,
        )?),
        TransportKind::Uds => Box::new(Uds::connect(
            place.need_path(&place.dir, crate::config::env::DIR)?,
            rank,
            size,
        )?),
        #[cfg(feature = "quic")]
        TransportKind::Quic => {
            io_threads = true;
            Box::new(crate::transport::quic::Quic::connect(
                place.need_path(&place.dir, crate::config::env::DIR)?,
                place,
                &[],
                None,
            )?)
        }
        #[cfg(feature = "quic")]
        TransportKind::Hybrid => {
            let hosts = place.hosts.clone().unwrap_or_default();
            let here = hosts.iter().filter(|h| **h == hosts[rank]).count();
            local_ranks = here;
            io_threads = here == 1 && size > 1;
            Box::new(crate::transport::hybrid::Hybrid::connect(
                place,
                &cfg.tuning,
                &hosts,
            )?)
        }
        #[cfg(not(feature = "quic"))]
        TransportKind::Quic | TransportKind::Hybrid => {
            return Err(crate::error::Error::Bootstrap(format!(
                "transport {} needs QUIC, and this program was built without the `quic` \
                 feature of ranks (use --transport shm or uds on one host)",
                place.transport
            )))
        }
    };
    tracing::debug!(rank, size, transport = t.name(), "joined the job");
    let tuning = Tuning::resolve(&cfg.tuning, local_ranks, io_threads);
    let host = host_of(place);
    let mut core = Core::new(rank, size, t, tuning, host);
    if let Some(path) = &place.board {
        let board = Arc::new(crate::board::Board::open(path, size)?);
        crate::board::set_global(board.clone());
        core = core.with_board(board);
    }
    Ok(Comm::world(Arc::new(core)))
}

/// What this rank's host is called in the job (what `split_by_host` groups by).
fn host_of(place: &Placement) -> String {
    place.hostname.clone().unwrap_or_else(local_host)
}

fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}
