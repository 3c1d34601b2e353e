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
        if let Some(pmi) = crate::pmi::Pmi::from_env()? {
            return pmi_world(pmi, cfg);
        }
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

/// A job started by `srun --mpi=pmi2 ./prog` (no `ranks run`): rank and size from Slurm's
/// PMI-2 server, and the processes meet through its key-value store. Within one node they
/// talk through a segment that rank 0 creates and removes again once everyone has mapped
/// it, so nothing is left behind whatever happens later.
fn pmi_world(mut pmi: crate::pmi::Pmi, cfg: &Config) -> Result<Comm> {
    use crate::error::Error;
    let (rank, size) = (pmi.rank, pmi.size);
    let host = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| local_host());
    pmi.put(&format!("ranks-host-{rank}"), &host)?;
    // Rank 0 always publishes something, so nobody waits for a segment that will not come.
    let mut created = None;
    if rank == 0 {
        let job: String = pmi
            .jobid
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path =
            std::path::PathBuf::from(format!("/dev/shm/ranks-{}-srun-{job}", std::process::id()));
        let word = match crate::transport::shm::Segment::create(&path, size) {
            Ok(seg) => {
                created = Some(seg);
                path.display().to_string()
            }
            Err(e) => format!("error:{e}").replace(';', ","),
        };
        pmi.put("ranks-shm", &word)?;
    }
    pmi.fence()?;
    let mut hosts = Vec::with_capacity(size);
    for r in 0..size {
        hosts.push(
            pmi.get(&format!("ranks-host-{r}"))?
                .ok_or_else(|| Error::Bootstrap(format!("PMI-2: rank {r} published no host")))?,
        );
    }
    if let Some((r, other)) = hosts.iter().enumerate().find(|(_, h)| **h != hosts[0]) {
        return Err(Error::Bootstrap(format!(
            "started by srun on several nodes (rank 0 on {}, rank {r} on {other}): starting \
             ranks directly with srun works within one node so far; across nodes, run `ranks \
             run` inside the allocation (it starts its agents with srun)",
            hosts[0]
        )));
    }
    let word = pmi.get("ranks-shm")?.unwrap_or_default();
    if let Some(why) = word.strip_prefix("error:") {
        return Err(Error::Bootstrap(format!(
            "rank 0 could not make the job's segment: {why}"
        )));
    }
    let shm = Shm::attach(std::path::Path::new(&word), rank, size, &cfg.tuning)?;
    // Once everyone has it mapped, the file can go.
    pmi.fence()?;
    drop(created);
    tracing::debug!(rank, size, "joined a job started by srun");
    let tuning = Tuning::resolve(&cfg.tuning, size, false);
    let core = Core::new(rank, size, Box::new(shm.without_launcher()), tuning, host);
    // The connection to srun stays open while the process lives.
    static PMI: std::sync::Mutex<Option<crate::pmi::Pmi>> = std::sync::Mutex::new(None);
    *PMI.lock().unwrap_or_else(|p| p.into_inner()) = Some(pmi);
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
