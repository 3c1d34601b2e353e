//! Running a job: place the ranks on hosts, start them (here directly, elsewhere through an
//! agent over ssh), forward their output, and apply the exit rules.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::hosts::{self, Host};
use crate::jobstate::{signal_name, Action, HostState, Input, Job};
use crate::node::{resolve_program, Node, NodeEvent};
use crate::proto::{Bind, FromAgent, NodeSpec, ToAgent};
use crate::remote::{HostEvent, Remote, Via};
use crate::{RunArgs, TransportKind};
use ranks::config::TransportKind as Resolved;

/// How long ranks get between SIGTERM and SIGKILL when a job is stopped.
fn grace() -> Duration {
    ranks::config::Config::global().map_or(Duration::from_secs(1), |c| c.kill_grace)
}

/// How long agents get to come up (ssh connects in at most 10 s).
const AGENT_START: Duration = Duration::from_secs(30);

enum Event {
    /// From the node on this host.
    Local(NodeEvent),
    /// From the agent on host `.0`.
    Host(usize, HostEvent),
    Signal(i32),
    /// A rank called `abort(code)`.
    Aborted(u8),
}

fn job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), (nanos as u64) & 0xffff_ffff)
}

/// One host of the job and how it runs.
struct HostRun {
    name: String,
    ranks: Vec<usize>,
    /// `None` for this host (the launcher runs its ranks itself).
    remote: Option<Remote>,
    /// When the agent last spoke (while it starts).
    heard: Instant,
}

/// Validate the command line and work out where every rank runs.
struct Plan {
    /// Number of ranks.
    n: usize,
    /// How agents start on other hosts.
    via: Via,
    program: String,
    extra_env: Vec<(String, String)>,
    hosts: Vec<Host>,
    /// Host index of every rank.
    host_of: Vec<u32>,
    transport: Resolved,
    bind: Bind,
}

/// glibc's allocator settings for the ranks of a job that uses QUIC: freed memory up to
/// 64 MiB stays with the process (`trim_threshold`), the heap grows 4 MiB at a time
/// (`top_pad`), and blocks under 32 MiB come from the heap (`mmap_threshold`, the most
/// glibc's own adjustment would give; fixing the other two turns that adjustment off).
/// quinn copies every batch of datagrams it receives into a new 64 KiB buffer, freed once
/// the rank has read it; with glibc's defaults the heap shrank each time the rank caught up
/// and grew again with the next burst (900 `brk` calls and 40,000 page faults for 1 GiB
/// between two hosts, against 10,000 faults with these settings).
const MALLOC_TUNABLES: &str = "glibc.malloc.trim_threshold=67108864:\
                               glibc.malloc.top_pad=4194304:\
                               glibc.malloc.mmap_threshold=33554432";

/// glibc's older names for its allocator settings: one set by the user means they chose.
const MALLOC_VARS: [&str; 4] = [
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
];

/// The `GLIBC_TUNABLES` to give the ranks of a job that uses QUIC, given the user's own
/// (`tunables`) and whether they set any of [`MALLOC_VARS`]: [`MALLOC_TUNABLES`] after
/// theirs, or nothing when they set any allocator setting themselves.
fn malloc_tunables(tunables: Option<&str>, malloc_vars: bool) -> Option<String> {
    match tunables.filter(|t| !t.is_empty()) {
        _ if malloc_vars => None,
        Some(t) if t.contains("glibc.malloc.") => None,
        Some(t) => Some(format!("{t}:{MALLOC_TUNABLES}")),
        None => Some(MALLOC_TUNABLES.to_string()),
    }
}

/// The Slurm allocation the job runs on: inside one, a job without hosts of its own runs on
/// it.
pub fn allocation(args: &RunArgs) -> Result<Option<crate::slurm::Allocation>, String> {
    match (&args.host, &args.hostfile) {
        (None, None) => crate::slurm::Allocation::from_env(&|k| std::env::var(k).ok()),
        _ => Ok(None),
    }
}

fn plan(args: &RunArgs) -> Result<Plan, String> {
    let allocation = allocation(args)?;
    let n = match (args.np, &allocation) {
        (Some(n), Some(a)) if n > a.slots() => {
            return Err(format!(
                "-n {n} is more than the {} slot(s) of Slurm job {} ({}); ask Slurm for more \
                 (salloc -n {n}) or give a smaller -n",
                a.slots(),
                a.job,
                a.hosts
                    .iter()
                    .map(|h| format!("{}:{}", h.name, h.slots))
                    .collect::<Vec<_>>()
                    .join(",")
            ))
        }
        (Some(n), _) => n,
        (None, Some(a)) => a.slots(),
        (None, None) => {
            return Err(
                "-n N is needed (inside a Slurm allocation it defaults to one rank per slot)"
                    .into(),
            )
        }
    };
    if n == 0 {
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
    let all = match (&args.host, &args.hostfile, &allocation) {
        (Some(_), Some(_), _) => return Err("give --host or --hostfile, not both".into()),
        (Some(h), None, _) => hosts::parse_host_list(h)?,
        (None, Some(f), _) => hosts::parse_hostfile(f)?,
        (None, None, Some(a)) => a.hosts.clone(),
        (None, None, None) => vec![Host {
            name: "localhost".into(),
            slots: n,
        }],
    };
    let via = match (&allocation, &args.ssh) {
        (Some(_), None) => Via::Srun,
        _ => Via::Ssh(
            args.ssh
                .as_deref()
                .unwrap_or("ssh")
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        ),
    };
    let placement = hosts::map(&all, n, args.map_by)?;
    // Keep the hosts that got ranks, in order.
    let mut used: Vec<usize> = Vec::new();
    let mut host_of = Vec::with_capacity(n);
    for h in placement {
        let h = h as usize;
        let i = used.iter().position(|u| *u == h).unwrap_or_else(|| {
            used.push(h);
            used.len() - 1
        });
        host_of.push(i as u32);
    }
    let hosts: Vec<Host> = used.iter().map(|&i| all[i].clone()).collect();
    let locals: Vec<&str> = hosts
        .iter()
        .filter(|h| hosts::is_local(&h.name))
        .map(|h| h.name.as_str())
        .collect();
    if locals.len() > 1 {
        return Err(format!(
            "hosts {} are all this machine; name it once",
            locals.join(" and ")
        ));
    }
    let multi = hosts.len() > 1;
    let transport = match (args.transport, multi) {
        (TransportKind::Auto, false) => Resolved::Shm,
        (TransportKind::Auto, true) => Resolved::Hybrid,
        (TransportKind::Quic, _) => Resolved::Quic,
        (t @ (TransportKind::Shm | TransportKind::Uds), true) => {
            return Err(format!(
                "--transport {} works within one host; this job spans {} hosts (use auto or quic)",
                t.name(),
                hosts.len()
            ))
        }
        (TransportKind::Shm, false) => Resolved::Shm,
        (TransportKind::Uds, false) => Resolved::Uds,
    };
    let bind = match (&args.bind, &args.iface) {
        (Some(_), Some(_)) => return Err("give --bind or --iface, not both".into()),
        (Some(b), None) => {
            let ip = b.split('/').next().unwrap_or("");
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "--bind {b:?}: expected an IP address or a network like 10.0.0.0/24"
                ));
            }
            Bind::Addr(b.clone())
        }
        (None, Some(i)) => Bind::Iface(i.clone()),
        (None, None) => Bind::Default,
    };
    if let Some(p) = &args.ports {
        if ranks::config::port_range(p).is_none() {
            return Err(format!(
                "--ports {p:?}: expected LOW-HIGH, e.g. 41000-41100"
            ));
        }
    }
    let program = args
        .program()
        .to_str()
        .ok_or("the program name is not valid UTF-8")?
        .to_string();
    if hosts.iter().any(|h| hosts::is_local(&h.name)) {
        resolve_program(&program)?;
    }
    Ok(Plan {
        n,
        via,
        program,
        extra_env,
        hosts,
        host_of,
        transport,
        bind,
    })
}

fn to_strings(v: &[OsString]) -> Result<Vec<String>, String> {
    v.iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| format!("argument {a:?} is not valid UTF-8"))
        })
        .collect()
}

/// Run the job; `Ok(exit code)`, or `Err(message)` for a usage error before anything ran.
pub fn run(args: RunArgs) -> Result<u8, String> {
    let plan = plan(&args)?;
    let n = plan.n;
    let id = job_id();
    let multi = plan.hosts.len() > 1;

    crate::node::reap_stale("ranks");
    let credentials = if plan.transport.uses_quic() {
        ranks::transport::quic::job_credentials().map_err(|e| e.to_string())?
    } else {
        Vec::new()
    };
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let prog_args = to_strings(args.args())?;
    let bars = Arc::new(crate::output::Bars::new(match args.progress {
        crate::Progress::Auto => {
            use std::io::IsTerminal;
            std::io::stderr().is_terminal().then_some(true)
        }
        crate::Progress::Always => Some(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        crate::Progress::Never => None,
    }));
    let mut env = plan.extra_env.clone();
    if plan.transport.uses_quic() {
        // What the ranks will see: `-x` first, else the launcher's own environment.
        let user = |k: &str| {
            let given = plan.extra_env.iter().rev().find(|(n, _)| n == k);
            given
                .map(|(_, v)| v.clone())
                .or_else(|| std::env::var(k).ok())
        };
        let vars = MALLOC_VARS.iter().any(|k| user(k).is_some());
        if let Some(t) = malloc_tunables(user("GLIBC_TUNABLES").as_deref(), vars) {
            env.push(("GLIBC_TUNABLES".to_string(), t));
        }
    }
    if bars.on() {
        env.push((ranks::config::env::PROGRESS.to_string(), "1".to_string()));
    }
    let spec_for = |i: usize| NodeSpec {
        job: id.clone(),
        host_index: i as u32,
        host_name: plan.hosts[i].name.clone(),
        ranks: (0..n).filter(|&r| plan.host_of[r] as usize == i).collect(),
        hosts: plan.host_of.clone(),
        program: plan.program.clone(),
        args: prog_args.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
        transport: plan.transport,
        credentials: credentials.clone(),
        bind: plan.bind.clone(),
        ports: args.ports.clone(),
        trace: args.trace.is_some(),
    };

    let (tx, rx) = mpsc::channel::<Event>();
    // Catch the signals that should stop the job before any rank exists.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR1,
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

    // Agents on the other hosts, all started at once.
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "ranks".into()),
    };
    let mut hosts: Vec<HostRun> = Vec::new();
    let close_all = |hosts: &[HostRun]| {
        for h in hosts {
            if let Some(r) = &h.remote {
                r.close();
            }
        }
        for h in hosts {
            if let Some(r) = &h.remote {
                r.reap(Duration::from_secs(3));
            }
        }
    };
    for (i, h) in plan.hosts.iter().enumerate() {
        let remote = if hosts::is_local(&h.name) {
            None
        } else {
            match Remote::start(&h.name, &plan.via, &agent, tx.clone(), move |e| {
                Event::Host(i, e)
            }) {
                Ok(r) => Some(r),
                Err(e) => {
                    close_all(&hosts);
                    return Err(e);
                }
            }
        };
        hosts.push(HostRun {
            name: h.name.clone(),
            ranks: (0..n).filter(|&r| plan.host_of[r] as usize == i).collect(),
            remote,
            heard: Instant::now(),
        });
    }
    // Wait until every agent is up.
    let mut waiting = hosts.iter().filter(|h| h.remote.is_some()).count();
    let mut launcher_ip = None;
    let start_by = Instant::now() + AGENT_START;
    while waiting > 0 {
        let ev = rx.recv_timeout(start_by.saturating_duration_since(Instant::now()));
        let fail = match ev {
            Ok(Event::Host(i, HostEvent::Msg(FromAgent::Ready { launcher_ip: ip }))) => {
                waiting -= 1;
                launcher_ip = launcher_ip.or(ip);
                let h = &mut hosts[i];
                h.heard = Instant::now();
                h.remote.as_ref().expect("remote").set_live();
                continue;
            }
            Ok(Event::Host(i, HostEvent::Gone(why))) => hosts[i]
                .remote
                .as_ref()
                .expect("remote")
                .startup_failure(&why),
            Ok(Event::Host(..) | Event::Local(_) | Event::Aborted(..)) => continue,
            Ok(Event::Signal(sig)) if sig == signal_hook::consts::SIGUSR1 => continue,
            Ok(Event::Signal(sig)) => {
                crate::say!("ranks: got {}; stopping the job", signal_name(sig));
                close_all(&hosts);
                sig_handle.close();
                return Ok((128 + sig) as u8);
            }
            Err(_) => {
                let slow: Vec<&str> = hosts
                    .iter()
                    .filter(|h| h.remote.is_some() && h.heard.elapsed() >= AGENT_START)
                    .map(|h| h.name.as_str())
                    .collect();
                format!(
                    "host(s) {}: the agent did not come up within {} s",
                    slow.join(", "),
                    AGENT_START.as_secs()
                )
            }
        };
        for h in &hosts {
            if let Some(r) = &h.remote {
                r.kill();
            }
        }
        close_all(&hosts);
        sig_handle.close();
        return Err(fail);
    }
    for (i, h) in hosts.iter().enumerate() {
        if let Some(r) = &h.remote {
            r.send(ToAgent::Start(Box::new(spec_for(i))));
        }
    }

    // This host's ranks.
    let mut node: Option<Node> = None;
    let lines = crate::output::Lines {
        bars: bars.clone(),
        tails: Arc::new(crate::output::Tails::default()),
        tag: args.tag_output,
    };
    let local_host = hosts.iter().position(|h| h.remote.is_none());
    if let Some(i) = local_host {
        let spec = spec_for(i);
        let default_bind = match (multi, &plan.via) {
            (false, _) => None,
            (true, Via::Srun) => launcher_ip
                .clone()
                .or_else(ranks::transport::quic::slurm_node_address),
            (true, Via::Ssh(_)) => launcher_ip.clone(),
        };
        let started = crate::agent::choose_bind(&spec.bind, default_bind).and_then(|bind| {
            let program = resolve_program(&spec.program)?;
            let (ntx, nrx) = mpsc::channel();
            let aborts = std::sync::Mutex::new(tx.clone());
            let tx = tx.clone();
            std::thread::spawn(move || {
                for e in nrx {
                    if tx.send(Event::Local(e)).is_err() {
                        break;
                    }
                }
            });
            let lines = lines.clone();
            let sink = Arc::new(move |rank: usize, err: bool, line: &[u8]| {
                if let Some(code) = lines.handle(rank, err, line) {
                    let tx = aborts.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = tx.send(Event::Aborted(code));
                }
            });
            Node::start(&spec, &program, bind, ntx, sink)
        });
        match started {
            Ok(nd) => node = Some(nd),
            Err(e) => {
                for h in &hosts {
                    if let Some(r) = &h.remote {
                        r.send(ToAgent::Signal(Signal::KILL.as_raw()));
                    }
                }
                close_all(&hosts);
                sig_handle.close();
                return Err(e);
            }
        }
    }
    drop(tx);

    let now = Instant::now();
    // Traces sent by the agents (`--trace`): bytes so far, and whether the last piece came.
    let mut traces: HashMap<usize, (Vec<u8>, bool)> = HashMap::new();
    let mut job = Job::new(
        hosts
            .iter()
            .map(|h| HostState {
                name: h.name.clone(),
                ranks: h.ranks.clone(),
                remote: h.remote.is_some(),
                heard: now,
                done: false,
                lost: false,
            })
            .collect(),
        plan.host_of.iter().map(|&h| h as usize).collect(),
        args.keep_going,
        args.timeout,
        grace(),
        now,
    );
    // Carry out what the job's rules call for.
    let act = |actions: Vec<Action>, hosts: &[HostRun], job: &mut Job| {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::Say(line) => crate::say!("{line}"),
                Action::Signal { host, sig } => match (&hosts[host].remote, &node) {
                    (Some(r), _) => r.send(ToAgent::Signal(sig)),
                    (None, Some(nd)) => {
                        if let Some(s) = Signal::from_named_raw(sig) {
                            nd.signal(s)
                        }
                    }
                    (None, None) => {}
                },
                Action::RelayEnd { host, rank, status } => match (&hosts[host].remote, &node) {
                    (Some(r), _) => r.send(ToAgent::RankEnded { rank, status }),
                    (None, Some(nd)) => nd.rank_ended(rank, status),
                    (None, None) => {}
                },
                Action::AskReport { host } => match (&hosts[host].remote, &node) {
                    (Some(r), _) => r.send(ToAgent::Report),
                    (None, Some(nd)) => {
                        let views = nd.blocked();
                        queue.extend(job.on(Input::Report { host, views }, Instant::now()));
                    }
                    (None, None) => {}
                },
                Action::Ping { host } => {
                    if let Some(r) = &hosts[host].remote {
                        r.send(ToAgent::Ping);
                    }
                }
                Action::Drop { host } => {
                    if let Some(r) = &hosts[host].remote {
                        r.kill();
                    }
                }
            }
        }
    };

    loop {
        if job.finished(Instant::now()) {
            break;
        }
        let now = Instant::now();
        let wake = job.next_wake(now);
        let input = match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Event::Local(NodeEvent::Started(rank, pid))) => Input::Started { rank, pid },
            Ok(Event::Local(NodeEvent::Exited(rank, status))) => Input::Exited { rank, status },
            Ok(Event::Local(NodeEvent::Address(r, addr))) => {
                relay_address(&hosts, node.as_ref(), local_host, r, &addr);
                Input::Tick
            }
            Ok(Event::Host(i, HostEvent::Msg(m))) => {
                let heard = job.on(Input::Heard(i), Instant::now());
                act(heard, &hosts, &mut job);
                match m {
                    FromAgent::Output { rank, err, line } => lines
                        .handle(rank, err, &line)
                        .map_or(Input::Tick, Input::Aborted),
                    FromAgent::Started { rank, pid } => Input::Started { rank, pid },
                    FromAgent::Exited { rank, status } => Input::Exited { rank, status },
                    FromAgent::Address { rank, addr } => {
                        relay_address(&hosts, node.as_ref(), Some(i), rank, &addr);
                        Input::Tick
                    }
                    FromAgent::Trace { rank, piece, last } => {
                        let t = traces.entry(rank).or_default();
                        t.0.extend_from_slice(&piece);
                        t.1 = last;
                        Input::Tick
                    }
                    FromAgent::Done => Input::HostDone(i),
                    FromAgent::Failed(why) => Input::AgentFailed { host: i, why },
                    FromAgent::Blocked(views) => Input::Report { host: i, views },
                    FromAgent::Ready { .. } | FromAgent::Pong => Input::Tick,
                }
            }
            Ok(Event::Host(i, HostEvent::Gone(why))) => Input::HostGone { host: i, why },
            Ok(Event::Signal(sig)) => Input::Signal(sig),
            Ok(Event::Aborted(code)) => Input::Aborted(code),
            Err(mpsc::RecvTimeoutError::Timeout) => Input::Tick,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let actions = job.on(input, Instant::now());
        act(actions, &hosts, &mut job);
    }
    let mut last = Vec::new();
    job.flush(&mut last);
    act(last, &hosts, &mut job);
    if let Some(nd) = node {
        for (rank, t) in nd.finish() {
            traces.insert(rank, (t, true));
        }
    }
    // Output read after the last exit may still hold an abort line.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Aborted(code) = ev {
            job.on(Input::Aborted(code), Instant::now());
        }
    }
    close_all(&hosts);
    sig_handle.close();
    // The cause of a failed job, again, with its rank: it may be far up in the output.
    if let Some(rank) = job.cause() {
        lines.tails.show(rank);
    }
    if let Some(path) = &args.trace {
        write_trace(path, n, traces);
    }
    Ok(job.exit_code())
}

/// Merge the ranks' traces (`(bytes, complete)` by rank) into one file at `path`, saying
/// what was written.
fn write_trace(path: &std::path::Path, size: usize, traces: HashMap<usize, (Vec<u8>, bool)>) {
    let mut all = Vec::new();
    for (rank, (bytes, complete)) in traces {
        match ranks::trace::RankTrace::decode(&bytes) {
            Ok(t) if complete => all.push(t),
            Ok(_) => crate::say!("ranks: the trace of rank {rank} arrived incomplete"),
            Err(e) => crate::say!("ranks: the trace of rank {rank}: {e}"),
        }
    }
    all.sort_by_key(|t| t.rank);
    let file = crate::trace::merge(&all, size);
    let calls = file.trace_events.iter().filter(|e| e.ph == "X").count();
    let written = serde_json::to_vec(&file)
        .map_err(|e| e.to_string())
        .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
    match written {
        Ok(()) => {
            let mut line = format!(
                "ranks: trace of {} rank(s), {calls} calls, written to {}",
                all.len(),
                path.display()
            );
            if !file.other_data.missing.is_empty() {
                let m: Vec<String> = file.other_data.missing.iter().map(u32::to_string).collect();
                let _ = write!(line, " (no trace from rank(s) {})", m.join(", "));
            }
            crate::say!("{line}");
        }
        Err(e) => crate::say!(
            "ranks: could not write the trace to {}: {e}",
            path.display()
        ),
    }
}

/// Pass a rank's QUIC address to every host but its own (`from`; `None` here).
fn relay_address(
    hosts: &[HostRun],
    node: Option<&Node>,
    from: Option<usize>,
    rank: usize,
    addr: &str,
) {
    for (j, h) in hosts.iter().enumerate() {
        if Some(j) == from {
            continue;
        }
        match (&h.remote, node) {
            (Some(rem), _) => rem.send(ToAgent::Addresses(vec![(rank, addr.to_string())])),
            (None, Some(nd)) => nd.add_addresses(&[(rank, addr.to_string())]),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quic_jobs_get_the_allocator_settings_after_the_users_own_tunables() {
        assert_eq!(
            malloc_tunables(None, false).as_deref(),
            Some(MALLOC_TUNABLES)
        );
        assert_eq!(
            malloc_tunables(Some(""), false).as_deref(),
            Some(MALLOC_TUNABLES)
        );
        assert_eq!(
            malloc_tunables(Some("glibc.pthread.rseq=0"), false),
            Some(format!("glibc.pthread.rseq=0:{MALLOC_TUNABLES}"))
        );
        assert!(!MALLOC_TUNABLES.contains(char::is_whitespace));
        assert_eq!(MALLOC_TUNABLES.split(':').count(), 3);
    }

    #[test]
    fn a_users_own_allocator_settings_are_left_alone() {
        assert_eq!(
            malloc_tunables(Some("glibc.malloc.arena_max=2"), false),
            None
        );
        assert_eq!(malloc_tunables(None, true), None);
        assert_eq!(malloc_tunables(Some("glibc.pthread.rseq=0"), true), None);
    }
}
