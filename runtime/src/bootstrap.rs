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
        let tuning = Tuning::resolve(&cfg.tuning, 1);
        let core = Core::new(0, 1, Box::new(Local::default()), tuning, local_host());
        return Ok(Comm::world(Arc::new(core)));
    };
    let (rank, size) = (place.rank, place.size);
    die_with_launcher(place.launcher_pid);
    let t: Box<dyn Transport> = match place.transport {
        TransportKind::Shm => Box::new(Shm::attach(
            place.need_path(&place.shm, crate::config::env::SHM)?,
            rank,
            size,
            &cfg.tuning,
            spins(&cfg.tuning, size),
        )?),
        TransportKind::Uds => Box::new(Uds::connect(
            place.need_path(&place.dir, crate::config::env::DIR)?,
            rank,
            size,
        )?),
        #[cfg(feature = "quic")]
        TransportKind::Quic => Box::new(crate::transport::quic::Quic::connect(
            place.need_path(&place.dir, crate::config::env::DIR)?,
            place,
            &[],
            None,
        )?),
        #[cfg(feature = "quic")]
        TransportKind::Hybrid => {
            let hosts = place.hosts.clone().unwrap_or_default();
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
    // Every rank of the job counts: hosts reached over the network may share this one's
    // cores (virtual machines, containers, the netns test hosts).
    let tuning = Tuning::resolve(&cfg.tuning, size);
    let host = host_of(place);
    let mut core = Core::new(rank, size, t, tuning, host)
        .with_hosts(place.hosts.clone().unwrap_or_else(|| vec![0; size]));
    if let Some(path) = &place.board {
        let board = Arc::new(crate::board::Board::open(path, size)?);
        crate::board::set_global(board.clone());
        core = core.with_board(board);
    }
    Ok(Comm::world(Arc::new(core)))
}

/// A job started by `srun --mpi=pmi2 ./prog` (no `ranks run`): rank and size from Slurm's
/// PMI-2 server, and the processes meet through its key-value store.
///
/// - Within a node, the node's first rank makes a segment and publishes its path; the file
///   is removed once everyone has mapped it, so nothing can be left behind.
/// - Across nodes, QUIC. There is no launcher to make job credentials, so each process makes
///   its own key and self-signed certificate and publishes its address and the certificate's
///   SHA-256 fingerprint; peers accept exactly the published certificates (no key crosses
///   the network, and nobody outside the step is in the key-value store).
///
/// Four fences: hosts; addresses and fingerprints (bound, before any file exists);
/// segments; everyone mapped and pinned (after which the segment files go and connections
/// start).
///
/// A rank that fails on the way asks srun to end the step: the others would otherwise wait
/// in a fence for it forever.
fn pmi_world(mut pmi: crate::pmi::Pmi, cfg: &Config) -> Result<Comm> {
    let job: String = pmi
        .jobid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let _ = DIRECT_JOB.set(format!("srun-{job}"));
    match pmi_wire(&mut pmi, cfg) {
        Ok(world) => {
            // The connection to srun stays open while the process lives.
            *PMI.lock().unwrap_or_else(|p| p.into_inner()) = Some(pmi);
            Ok(world)
        }
        Err(e) => {
            pmi.abort(&format!("rank {} could not join: {e}", pmi.rank));
            Err(e)
        }
    }
}

/// The job's name for a process started without the launcher (srun), the same in every
/// process of the step: what names its shared-memory files.
static DIRECT_JOB: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub(crate) fn direct_job() -> Option<String> {
    DIRECT_JOB.get().cloned()
}

fn pmi_wire(pmi: &mut crate::pmi::Pmi, cfg: &Config) -> Result<Comm> {
    use crate::error::Error;
    let (rank, size) = (pmi.rank, pmi.size);
    let host = std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| local_host());
    pmi.put(&format!("ranks-host-{rank}"), &host)?;
    pmi.fence()?;
    let mut hosts = Vec::with_capacity(size);
    for r in 0..size {
        hosts.push(
            pmi.get(&format!("ranks-host-{r}"))?
                .ok_or_else(|| Error::Bootstrap(format!("PMI-2: rank {r} published no host")))?,
        );
    }
    let local = crate::transport::local_indices(&hosts, rank);
    let n_local = local.iter().flatten().count();
    let leader = hosts
        .iter()
        .position(|h| *h == host)
        .expect("our own host is among the hosts");
    #[cfg(feature = "quic")]
    let quic = if n_local < size {
        Some(pmi_quic_publish(pmi, cfg)?)
    } else {
        None
    };
    #[cfg(not(feature = "quic"))]
    if n_local < size {
        return Err(Error::Bootstrap(
            "started by srun on several nodes: QUIC between nodes needs the `quic` feature of \
             ranks, and this program was built without it"
                .into(),
        ));
    }
    // Everyone bound and published before any file exists: a rank that fails up to here
    // (ending the step) leaves nothing behind anywhere.
    pmi.fence()?;
    #[cfg(feature = "quic")]
    let quic = match quic {
        Some(bound) => Some(pmi_quic_pins(pmi, bound, &local)?),
        None => None,
    };
    // The node's first rank always publishes something, so nobody waits for a segment that
    // will not come.
    let mut created = None;
    if rank == leader && n_local > 1 {
        let job: String = pmi
            .jobid
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path =
            std::path::PathBuf::from(format!("/dev/shm/ranks-{}-srun-{job}", std::process::id()));
        let word = match crate::transport::shm::Segment::create(&path, n_local) {
            Ok(seg) => {
                created = Some(seg);
                path.display().to_string()
            }
            Err(e) => format!("error:{e}").replace(';', ","),
        };
        pmi.put(&format!("ranks-shm-{leader}"), &word)?;
    }
    pmi.fence()?;
    let shm = if n_local > 1 {
        let word = pmi.get(&format!("ranks-shm-{leader}"))?.unwrap_or_default();
        if let Some(why) = word.strip_prefix("error:") {
            return Err(Error::Bootstrap(format!(
                "rank {leader} could not make the segment of node {host}: {why}"
            )));
        }
        let me = local[rank].expect("we are local");
        let spins = spins(&cfg.tuning, size);
        Some(
            Shm::attach(std::path::Path::new(&word), me, n_local, &cfg.tuning, spins)?
                .without_launcher(),
        )
    } else {
        None
    };
    // Once everyone has its segment mapped and its pins set, the files can go and the
    // connections start.
    pmi.fence()?;
    drop(created);
    let t: Box<dyn Transport> = match shm {
        #[cfg(feature = "quic")]
        shm if n_local < size => {
            let (bound, addrs) = quic.expect("published");
            let remote: Vec<bool> = local.iter().map(Option::is_none).collect();
            let q = crate::transport::quic::Quic::wire(
                bound,
                &remote,
                shm.as_ref().map(Shm::waker),
                Box::new(move |p| addrs[p]),
            )?;
            Box::new(crate::transport::hybrid::Hybrid::from_parts(
                local,
                shm,
                Some(q),
            ))
        }
        Some(shm) => Box::new(shm),
        None => Box::new(Local::default()),
    };
    tracing::debug!(
        rank,
        size,
        transport = t.name(),
        "joined a job started by srun"
    );
    let tuning = Tuning::resolve(&cfg.tuning, size);
    let host_ids = hosts
        .iter()
        .map(|h| hosts.iter().position(|x| x == h).unwrap_or(0) as u32)
        .collect();
    let core = Core::new(rank, size, t, tuning, host).with_hosts(host_ids);
    Ok(Comm::world(Arc::new(core)))
}

/// The connection to srun's PMI-2 server of a rank it started directly.
static PMI: std::sync::Mutex<Option<crate::pmi::Pmi>> = std::sync::Mutex::new(None);

/// Under srun (no launcher): ask Slurm to end the whole step, because this rank aborts.
pub(crate) fn abort_step(msg: &str) {
    if let Some(pmi) = PMI.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        pmi.abort(msg);
    }
}

/// Bind this rank's QUIC endpoint (on `RANKS_BIND`, or the node name's address) with a
/// certificate of its own, and publish `ADDRESS FINGERPRINT` as `ranks-quic-R`.
#[cfg(feature = "quic")]
fn pmi_quic_publish(
    pmi: &mut crate::pmi::Pmi,
    cfg: &Config,
) -> Result<crate::transport::quic::Bound> {
    use crate::transport::quic::{slurm_node_address, Bound, Identity, Trust};
    let id = Identity::generate()?;
    let fp: String = id
        .fingerprint()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let bind = cfg
        .bind
        .clone()
        .or_else(slurm_node_address)
        .ok_or_else(|| {
            crate::error::Error::Bootstrap(format!(
                "rank {}: the step spans nodes, and this node's name resolves to no address other \
             peers can reach (only loopback, or nothing): set RANKS_BIND to this node's \
             address on the network between the nodes",
                pmi.rank
            ))
        })?;
    let bound = Bound::new(
        pmi.rank,
        pmi.size,
        Trust::Pinned(id, Default::default()),
        Some(&bind),
        cfg.ports,
    )?;
    pmi.put(
        &format!("ranks-quic-{}", pmi.rank),
        &format!("{} {fp}", bound.local_addr()?),
    )?;
    Ok(bound)
}

/// Every other node's ranks' addresses and fingerprints (after the fence): pin the
/// fingerprints in `bound`'s verifier and return the addresses.
#[cfg(feature = "quic")]
fn pmi_quic_pins(
    pmi: &mut crate::pmi::Pmi,
    bound: crate::transport::quic::Bound,
    local: &[Option<usize>],
) -> Result<(
    crate::transport::quic::Bound,
    Vec<Option<std::net::SocketAddr>>,
)> {
    use crate::error::Error;
    let mut addrs = vec![None; local.len()];
    // Ranks on this node publish nothing: their pin stays all zeros, which no
    // certificate's hash is.
    let mut pins = vec![[0u8; 32]; local.len()];
    for (r, l) in local.iter().enumerate() {
        if l.is_some() {
            continue;
        }
        let bad = |why: &str| Error::Bootstrap(format!("PMI-2: rank {r}'s QUIC entry {why}"));
        let word = pmi
            .get(&format!("ranks-quic-{r}"))?
            .ok_or_else(|| bad("is missing"))?;
        let (addr, fp) = word.split_once(' ').ok_or_else(|| bad("is malformed"))?;
        addrs[r] = Some(addr.parse().map_err(|_| bad("has a bad address"))?);
        if fp.len() != 64 {
            return Err(bad("has a bad fingerprint"));
        }
        for (i, b) in pins[r].iter_mut().enumerate() {
            *b = u8::from_str_radix(&fp[2 * i..2 * i + 2], 16)
                .map_err(|_| bad("has a bad fingerprint"))?;
        }
    }
    bound.pin(pins)?;
    Ok((bound, addrs))
}

/// What this rank's host is called in the job (what `split_by_host` groups by).
fn host_of(place: &Placement) -> String {
    place.hostname.clone().unwrap_or_else(local_host)
}

/// This process's host as the job names it (the launcher's name for it, Slurm's node name,
/// or the machine's name).
pub(crate) fn this_host() -> String {
    let cfg = Config::global().ok();
    match cfg.and_then(|c| c.placement.as_ref()) {
        Some(p) => host_of(p),
        None => std::env::var("SLURMD_NODENAME").unwrap_or_else(|_| local_host()),
    }
}

fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Whether the waiters of a rank of a job of `ranks` ranks spin before they sleep.
pub(crate) fn spins(cfg: &crate::config::Tuning, ranks: usize) -> bool {
    !Tuning::resolve(cfg, ranks).spin.is_zero()
}
