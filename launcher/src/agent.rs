//! `ranks agent`: what the launcher starts over ssh on every other host of a job. It runs
//! that host's ranks, sends their output, addresses and exit statuses back over the session,
//! and stops them when told to, or when the launcher falls silent (its host or network gone).

use std::io::Write;
use std::net::IpAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::node::{resolve_program, Node, NodeEvent};
use crate::proto::{read_msg, write_msg, Bind, FromAgent, ToAgent, HELLO};

/// Silence from the launcher after which the agent stops its ranks.
const LAUNCHER_SILENCE: Duration = Duration::from_secs(5);

enum Ev {
    Launcher(ToAgent),
    LauncherGone(String),
    Node(NodeEvent),
}

/// The IPv4 addresses of this host's interfaces: `(interface, address, prefix length)`.
fn interfaces() -> Vec<(String, IpAddr, u8)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| {
            let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
            let prefix = a
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| m.ip().to_bits().count_ones() as u8)
                .unwrap_or(32);
            Some((a.interface_name, IpAddr::V4(ip), prefix))
        })
        .collect()
}

/// The address this host's ranks bind to. `ssh_default` is used for [`Bind::Default`].
pub fn choose_bind(b: &Bind, ssh_default: Option<String>) -> Result<Option<String>, String> {
    match b {
        Bind::Default => Ok(ssh_default),
        Bind::Addr(a) => match a.split_once('/') {
            None => Ok(Some(a.clone())),
            Some((net, len)) => {
                let net: IpAddr = net
                    .parse()
                    .map_err(|_| format!("--bind {a}: {net:?} is not an IP address"))?;
                let len: u32 = len
                    .parse()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| format!("--bind {a}: bad prefix length"))?;
                let mask = |ip: IpAddr| match ip {
                    IpAddr::V4(v) => Some(v.to_bits().checked_shr(32 - len).unwrap_or(0)),
                    IpAddr::V6(_) => None,
                };
                interfaces()
                    .into_iter()
                    .find(|(_, ip, _)| mask(*ip).is_some() && mask(*ip) == mask(net))
                    .map(|(_, ip, _)| Some(ip.to_string()))
                    .ok_or_else(|| format!("no address of this host is in the network {a}"))
            }
        },
        Bind::Iface(name) => interfaces()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, ip, _)| Some(ip.to_string()))
            .ok_or_else(|| format!("this host has no interface {name:?} with an IPv4 address")),
    }
}

/// `SSH_CONNECTION` is `client_ip client_port server_ip server_port`.
fn ssh_connection(field: usize) -> Option<String> {
    std::env::var("SSH_CONNECTION")
        .ok()?
        .split_whitespace()
        .nth(field)
        .map(str::to_string)
}

pub fn main() -> u8 {
    // Everything we say goes through one writer thread, in order.
    let (out_tx, out_rx) = mpsc::channel::<FromAgent>();
    std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(std::io::stdout().lock());
        if w.write_all(HELLO).is_err() {
            return;
        }
        for m in out_rx {
            if write_msg(&mut w, &m).is_err() {
                return;
            }
        }
    });
    let say = |m: FromAgent| {
        let _ = out_tx.send(m);
    };
    say(FromAgent::Ready {
        launcher_ip: ssh_connection(0),
    });

    let (ev_tx, ev_rx) = mpsc::channel::<Ev>();
    // Stopped from outside (`scancel` through srun, a hung-up ssh session, kill): stop this
    // host's ranks and clean up, as when the launcher is gone.
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        let ev_tx = ev_tx.clone();
        std::thread::spawn(move || {
            // Keep the handlers (a second signal must not kill us mid-cleanup).
            for sig in signals.forever() {
                let name = crate::jobstate::signal_name(sig);
                let _ = ev_tx.send(Ev::LauncherGone(format!("got {name}")));
            }
        });
    }
    {
        let ev_tx = ev_tx.clone();
        std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(std::io::stdin().lock());
            let why = loop {
                match read_msg::<ToAgent>(&mut r) {
                    Ok(Some(m)) => {
                        if ev_tx.send(Ev::Launcher(m)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => break "the launcher closed the session".to_string(),
                    Err(e) => break format!("the session broke: {e}"),
                }
            };
            let _ = ev_tx.send(Ev::LauncherGone(why));
        });
    }

    // Wait for our share of the job.
    let mut early_addresses = Vec::new();
    let spec = loop {
        match ev_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ev::Launcher(ToAgent::Start(spec))) => break spec,
            Ok(Ev::Launcher(ToAgent::Addresses(a))) => early_addresses.extend(a),
            Ok(Ev::Launcher(_)) => {}
            Ok(Ev::LauncherGone(_)) | Err(_) => return 0,
            Ok(Ev::Node(_)) => unreachable!("no node yet"),
        }
    };
    crate::node::reap_stale("ranks agent");
    if std::path::Path::new(&spec.cwd).is_dir() {
        let _ = std::env::set_current_dir(&spec.cwd);
    }
    let started = resolve_program(&spec.program).and_then(|program| {
        let default = ssh_connection(2).or_else(|| {
            std::env::var_os("SLURM_JOB_ID")
                .and_then(|_| ranks::transport::quic::slurm_node_address())
        });
        let bind = choose_bind(&spec.bind, default)?;
        let (node_tx, node_rx) = mpsc::channel();
        let ev_tx = ev_tx.clone();
        std::thread::spawn(move || {
            for e in node_rx {
                if ev_tx.send(Ev::Node(e)).is_err() {
                    break;
                }
            }
        });
        let out = out_tx.clone();
        let sink = Arc::new(move |rank: usize, err: bool, line: &[u8]| {
            let _ = out.send(FromAgent::Output {
                rank,
                err,
                line: line.to_vec(),
            });
        });
        Node::start(&spec, &program, bind, node_tx, sink)
    });
    let node = match started {
        Ok(n) => n,
        Err(e) => {
            say(FromAgent::Failed(e));
            linger(&ev_rx);
            return 0;
        }
    };
    node.add_addresses(&early_addresses);

    let mut left = spec.ranks.len();
    let mut heard = Instant::now();
    let mut next_pong = Instant::now();
    let mut launcher_lost = None;
    while left > 0 {
        let now = Instant::now();
        if now >= next_pong {
            say(FromAgent::Pong);
            next_pong = now + Duration::from_secs(1);
        }
        if launcher_lost.is_none() && now.duration_since(heard) > LAUNCHER_SILENCE {
            launcher_lost = Some(format!(
                "no word from the launcher for {} s",
                LAUNCHER_SILENCE.as_secs()
            ));
        }
        if launcher_lost.is_some() {
            break;
        }
        match ev_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Ev::Node(NodeEvent::Started(rank, pid))) => say(FromAgent::Started { rank, pid }),
            Ok(Ev::Node(NodeEvent::Exited(rank, status))) => {
                left -= 1;
                say(FromAgent::Exited { rank, status });
            }
            Ok(Ev::Node(NodeEvent::Address(rank, addr))) => say(FromAgent::Address { rank, addr }),
            Ok(Ev::Launcher(ToAgent::Addresses(a))) => {
                heard = Instant::now();
                node.add_addresses(&a);
            }
            Ok(Ev::Launcher(ToAgent::Signal(sig))) => {
                heard = Instant::now();
                if let Some(s) = Signal::from_named_raw(sig) {
                    node.signal(s);
                }
            }
            Ok(Ev::Launcher(ToAgent::RankEnded { rank, status })) => {
                heard = Instant::now();
                node.rank_ended(rank, status);
            }
            Ok(Ev::Launcher(ToAgent::Report)) => {
                heard = Instant::now();
                say(FromAgent::Blocked(node.blocked()));
            }
            Ok(Ev::Launcher(_)) => heard = Instant::now(),
            Ok(Ev::LauncherGone(why)) => launcher_lost = Some(why),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if let Some(why) = launcher_lost {
        // Nobody is left to tell: stop our ranks, then leave.
        crate::say!("ranks agent: {why}; stopping this host's ranks");
        node.signal(Signal::TERM);
        let until = Instant::now() + Duration::from_secs(1);
        while left > 0 && Instant::now() < until {
            if let Ok(Ev::Node(NodeEvent::Exited(..))) =
                ev_rx.recv_timeout(Duration::from_millis(20))
            {
                left -= 1;
            }
        }
        node.signal(Signal::KILL);
        node.finish();
        return 1;
    }
    for (rank, trace) in node.finish() {
        let mut pieces = trace.chunks(crate::proto::TRACE_PIECE).peekable();
        while let Some(p) = pieces.next() {
            say(FromAgent::Trace {
                rank,
                piece: p.to_vec(),
                last: pieces.peek().is_none(),
            });
        }
    }
    say(FromAgent::Done);
    linger(&ev_rx);
    0
}

/// Stay until the launcher has read everything and closes the session (at most 10 s).
fn linger(ev_rx: &mpsc::Receiver<Ev>) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        match ev_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(Ev::LauncherGone(_)) | Err(RecvTimeoutError::Disconnected) => break,
            _ => {}
        }
    }
}
