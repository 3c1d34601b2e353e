//! Running a job: place the ranks on hosts, start them (here directly, elsewhere through an
//! agent over ssh), forward their output, and apply the exit rules.

use std::ffi::OsString;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::diagnose::{explain, View};
use crate::hosts::{self, Host};
use crate::node::{resolve_program, Node, NodeEvent};
use crate::output::print_line;
use crate::proto::{Bind, FromAgent, NodeSpec, Status, ToAgent};
use crate::remote::{HostEvent, Remote};
use crate::{RunArgs, TransportKind, EXIT_HOST_LOST, EXIT_TIMEOUT, EXIT_USAGE};
use ranks::config::parse_abort_line;
use ranks::config::TransportKind as Resolved;

/// How long ranks get between SIGTERM and SIGKILL when a job is stopped.
fn grace() -> Duration {
    ranks::config::Config::global().map_or(Duration::from_secs(1), |c| c.kill_grace)
}

/// Silence from an agent after which its host counts as lost (agents say something every
/// second; ssh's own keep-alives give up after about 5 s).
const HOST_SILENCE: Duration = Duration::from_secs(4);
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

fn job_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{:x}", std::process::id(), (nanos as u64) & 0xffff_ffff)
}

fn describe(status: Status) -> (String, u8) {
    match status {
        Status::Code(code) => {
            let hint = if code == 101 { " (a Rust panic)" } else { "" };
            (format!("exited with code {code}{hint}"), code as u8)
        }
        Status::Signal(sig) => (
            format!("was killed by signal {sig} ({})", signal_name(sig)),
            (128 + sig) as u8,
        ),
        Status::Unknown => ("ended in an unknown way".into(), 1),
    }
}

/// A diagnosis being gathered: what the launcher knows of every rank, and the hosts whose
/// answer is still to come (until `until`).
struct Diagnosis {
    views: Vec<View>,
    waiting: Vec<usize>,
    until: Instant,
}

impl Diagnosis {
    fn fill(&mut self, list: Vec<(usize, View)>) {
        for (r, view) in list {
            if let Some(v) = self.views.get_mut(r) {
                *v = view;
            }
        }
    }

    fn print(&self) {
        for line in explain(&self.views, ranks::board::now_ms()) {
            crate::say!("ranks: {line}");
        }
    }
}

/// One host of the job and how it runs.
struct HostRun {
    name: String,
    ranks: Vec<usize>,
    /// `None` for this host (the launcher runs its ranks itself).
    remote: Option<Remote>,
    heard: Instant,
    /// The agent finished sending (every rank exited, all output forwarded).
    done: bool,
    /// The host's session ended or fell silent.
    lost: bool,
}

/// Validate the command line and work out where every rank runs.
struct Plan {
    program: String,
    extra_env: Vec<(String, String)>,
    hosts: Vec<Host>,
    /// Host index of every rank.
    host_of: Vec<u32>,
    transport: Resolved,
    bind: Bind,
}

fn plan(args: &RunArgs) -> Result<Plan, String> {
    let n = args.np;
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
    let all = match (&args.host, &args.hostfile) {
        (Some(_), Some(_)) => return Err("give --host or --hostfile, not both".into()),
        (Some(h), None) => hosts::parse_host_list(h)?,
        (None, Some(f)) => hosts::parse_hostfile(f)?,
        (None, None) => vec![Host {
            name: "localhost".into(),
            slots: n,
        }],
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
    let n = args.np;
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
    let spec_for = |i: usize| NodeSpec {
        job: id.clone(),
        host_index: i as u32,
        host_name: plan.hosts[i].name.clone(),
        ranks: (0..n).filter(|&r| plan.host_of[r] as usize == i).collect(),
        hosts: plan.host_of.clone(),
        program: plan.program.clone(),
        args: prog_args.clone(),
        env: plan.extra_env.clone(),
        cwd: cwd.clone(),
        transport: plan.transport,
        credentials: credentials.clone(),
        bind: plan.bind.clone(),
        ports: args.ports.clone(),
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
    let ssh: Vec<String> = args
        .ssh
        .as_deref()
        .unwrap_or("ssh")
        .split_whitespace()
        .map(str::to_string)
        .collect();
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
            match Remote::start(&h.name, &ssh, &agent, tx.clone(), move |e| {
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
            done: false,
            lost: false,
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
    let local_host = hosts.iter().position(|h| h.remote.is_none());
    if let Some(i) = local_host {
        let spec = spec_for(i);
        let default_bind = if multi { launcher_ip.clone() } else { None };
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
            let tag = args.tag_output;
            let sink = Arc::new(move |rank: usize, err: bool, line: &[u8]| {
                if let Some(code) = err.then(|| parse_abort_line(rank, line)).flatten() {
                    let tx = aborts.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = tx.send(Event::Aborted(code));
                }
                print_line(rank, err, tag, line)
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

    let started = Instant::now();
    let deadline = args.timeout.map(|t| started + Duration::from_secs_f64(t));
    let mut pids: Vec<Option<u32>> = vec![None; n];
    let mut running = vec![true; n];
    let mut left = n;
    let mut failures: Vec<(usize, u8)> = Vec::new();
    // The code of the first `abort(code)`: it ends the job, even with --keep-going.
    let mut aborted: Option<u8> = None;
    let mut stop_code: Option<u8> = None;
    let mut kill_at: Option<Instant> = None;
    let mut host_lost = false;
    let mut signalled = vec![false; n];
    let mut next_ping = Instant::now();
    let has_remotes = hosts.iter().any(|h| h.remote.is_some());
    // How each rank ended (for the diagnosis), and a diagnosis being gathered.
    let mut ended: Vec<Option<String>> = vec![None; n];
    let mut diag: Option<Diagnosis> = None;
    let start_diagnosis = |hosts: &[HostRun], running: &[bool], ended: &[Option<String>]| {
        let mut d = Diagnosis {
            views: (0..n)
                .map(|r| match (&ended[r], running[r]) {
                    (Some(how), _) => View::Ended(how.clone()),
                    (None, false) => View::Ended("ended".into()),
                    (None, true) => View::Unknown,
                })
                .collect(),
            waiting: Vec::new(),
            until: Instant::now() + Duration::from_secs(1),
        };
        if let Some(nd) = &node {
            d.fill(nd.blocked());
        }
        for (i, h) in hosts.iter().enumerate() {
            if let (Some(r), false) = (&h.remote, h.lost || h.done) {
                r.send(ToAgent::Report);
                d.waiting.push(i);
            }
        }
        d
    };

    let stop_all = |hosts: &[HostRun], running: &[bool], signalled: &mut [bool], sig: Signal| {
        for (r, s) in signalled.iter_mut().enumerate() {
            if running[r] {
                *s = true;
            }
        }
        for h in hosts {
            if !h.ranks.iter().any(|&r| running[r]) {
                continue;
            }
            match &h.remote {
                None => {
                    if let Some(nd) = &node {
                        nd.signal(sig)
                    }
                }
                Some(r) => r.send(ToAgent::Signal(sig.as_raw())),
            }
        }
    };
    let where_ = |hosts: &[HostRun], r: usize| {
        if multi || hosts[plan.host_of[r] as usize].remote.is_some() {
            format!(" on {}", hosts[plan.host_of[r] as usize].name)
        } else {
            String::new()
        }
    };

    // Remote hosts also finish when their output is all in (`done`), so the loop runs until
    // then (for a short while at most: see `drain_by`).
    let mut drain_by: Option<Instant> = None;
    loop {
        let all_done = hosts.iter().all(|h| h.remote.is_none() || h.done || h.lost);
        if left == 0 {
            if all_done {
                break;
            }
            let d = *drain_by.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
            if Instant::now() >= d {
                break;
            }
        }
        let now = Instant::now();
        let mut wake = kill_at.unwrap_or(now + Duration::from_secs(3600));
        if let (Some(d), None) = (deadline, stop_code) {
            wake = wake.min(d);
        }
        if has_remotes {
            wake = wake.min(now + Duration::from_millis(250));
        }
        if let Some(d) = drain_by {
            wake = wake.min(d);
        }
        let ev = rx.recv_timeout(wake.saturating_duration_since(now));
        // A rank exited (here or on another host).
        let mut exited: Option<(usize, Status)> = None;
        match ev {
            Ok(Event::Local(NodeEvent::Started(r, pid))) => pids[r] = Some(pid),
            Ok(Event::Local(NodeEvent::Exited(r, st))) => exited = Some((r, st)),
            Ok(Event::Local(NodeEvent::Address(r, addr))) => {
                relay_address(&hosts, node.as_ref(), local_host, r, &addr)
            }
            Ok(Event::Host(i, HostEvent::Msg(m))) => {
                hosts[i].heard = Instant::now();
                match m {
                    FromAgent::Output { rank, err, line } => {
                        if let Some(code) = err.then(|| parse_abort_line(rank, &line)).flatten() {
                            aborted.get_or_insert(code);
                        }
                        print_line(rank, err, args.tag_output, &line)
                    }
                    FromAgent::Started { rank, pid } => pids[rank] = Some(pid),
                    FromAgent::Exited { rank, status } => exited = Some((rank, status)),
                    FromAgent::Address { rank, addr } => {
                        relay_address(&hosts, node.as_ref(), Some(i), rank, &addr)
                    }
                    FromAgent::Done => hosts[i].done = true,
                    FromAgent::Failed(why) => {
                        // The first failure is the news; others are mostly the same one.
                        if stop_code.is_none() {
                            crate::say!("ranks: error: host {}: {why}", hosts[i].name);
                        }
                        hosts[i].done = true;
                        for &r in &hosts[i].ranks {
                            if running[r] {
                                running[r] = false;
                                left -= 1;
                            }
                        }
                        if stop_code.is_none() {
                            stop_code = Some(EXIT_USAGE);
                            stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                            kill_at = Some(Instant::now() + grace());
                        }
                    }
                    FromAgent::Blocked(list) => {
                        if let Some(d) = &mut diag {
                            d.fill(list);
                            d.waiting.retain(|&h| h != i);
                        }
                    }
                    FromAgent::Ready { .. } | FromAgent::Pong => {}
                }
            }
            Ok(Event::Host(i, HostEvent::Gone(why))) => {
                if !hosts[i].lost && lose_host(&mut hosts[i], &why, &mut running, &mut left) {
                    host_lost = true;
                    if stop_code.is_none() {
                        stop_code = Some(EXIT_HOST_LOST);
                        stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                        kill_at = Some(Instant::now() + grace());
                    }
                }
            }
            Ok(Event::Signal(sig)) if sig == signal_hook::consts::SIGUSR1 => {
                if diag.is_none() {
                    diag = Some(start_diagnosis(&hosts, &running, &ended));
                }
            }
            Ok(Event::Signal(sig)) => {
                if stop_code.is_none() {
                    crate::say!("ranks: got {}; stopping the job", signal_name(sig));
                    if diag.is_none() {
                        diag = Some(start_diagnosis(&hosts, &running, &ended));
                    }
                    stop_code = Some((128 + sig) as u8);
                    stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                    kill_at = Some(Instant::now() + grace());
                } else {
                    // A second Ctrl-C: do not wait for the grace period.
                    stop_all(&hosts, &running, &mut signalled, Signal::KILL);
                }
            }
            Ok(Event::Aborted(code)) => {
                aborted.get_or_insert(code);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }

        if let (Some(_), None) = (aborted, stop_code) {
            if left > 0 {
                crate::say!("ranks: stopping the other {left} rank(s)");
            }
            stop_code = aborted;
            stop_all(&hosts, &running, &mut signalled, Signal::TERM);
            kill_at = Some(Instant::now() + grace());
        }
        if let Some((rank, status)) = exited {
            if !running[rank] {
                continue;
            }
            running[rank] = false;
            left -= 1;
            ended[rank] = Some(describe(status).0);
            // Every other host learns of the end at once (the ranks there read it from
            // their board), so waits on this rank end everywhere, whatever the transport.
            for (j, h) in hosts.iter().enumerate() {
                if j == plan.host_of[rank] as usize || h.lost || h.done {
                    continue;
                }
                match (&h.remote, &node) {
                    (Some(rem), _) => rem.send(ToAgent::RankEnded { rank, status }),
                    (None, Some(nd)) => nd.rank_ended(rank, status),
                    (None, None) => {}
                }
            }
            let ok = matches!(status, Status::Code(0));
            // A rank that we signalled and that died of a signal did not fail by itself.
            let ours = signalled[rank] && matches!(status, Status::Signal(_));
            if !ok && !ours {
                let (why, code) = describe(status);
                let pid = pids[rank].unwrap_or(0);
                crate::say!(
                    "ranks: rank {rank} (pid {pid}{}) {why}",
                    where_(&hosts, rank)
                );
                failures.push((rank, code));
                if stop_code.is_none() && !args.keep_going {
                    if left > 0 {
                        crate::say!("ranks: stopping the other {left} rank(s)");
                    }
                    stop_code = Some(code);
                    stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                    kill_at = Some(Instant::now() + grace());
                }
            }
        }

        if diag
            .as_ref()
            .is_some_and(|d| d.waiting.is_empty() || Instant::now() >= d.until)
        {
            if let Some(d) = diag.take() {
                d.print();
            }
        }
        let now = Instant::now();
        if let Some(k) = kill_at {
            if now >= k {
                stop_all(&hosts, &running, &mut signalled, Signal::KILL);
                kill_at = None;
            }
        }
        if let (Some(d), None) = (deadline, stop_code) {
            if now >= d {
                let still: Vec<String> = (0..n)
                    .filter(|&r| running[r])
                    .map(|r| r.to_string())
                    .collect();
                crate::say!(
                    "ranks: timeout after {:.1} s; rank(s) still running: {}",
                    args.timeout.unwrap_or(0.0),
                    still.join(", ")
                );
                if diag.is_none() {
                    diag = Some(start_diagnosis(&hosts, &running, &ended));
                }
                stop_code = Some(EXIT_TIMEOUT);
                stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                kill_at = Some(Instant::now() + grace());
            }
        }
        if has_remotes {
            if now >= next_ping {
                next_ping = now + Duration::from_secs(1);
                for h in &hosts {
                    if let Some(r) = &h.remote {
                        if !h.lost && !h.done {
                            r.send(ToAgent::Ping);
                        }
                    }
                }
            }
            for i in 0..hosts.len() {
                let h = &mut hosts[i];
                if h.remote.is_none() || h.lost || h.done {
                    continue;
                }
                if now.duration_since(h.heard) > HOST_SILENCE {
                    let why = format!("no keep-alive for {} s", HOST_SILENCE.as_secs());
                    if !lose_host(h, &why, &mut running, &mut left) {
                        continue;
                    }
                    host_lost = true;
                    if stop_code.is_none() {
                        stop_code = Some(EXIT_HOST_LOST);
                        stop_all(&hosts, &running, &mut signalled, Signal::TERM);
                        kill_at = Some(Instant::now() + grace());
                    }
                }
            }
        }
    }
    if let Some(d) = diag.take() {
        d.print();
    }
    if let Some(nd) = node {
        nd.finish();
    }
    // Output read after the last exit may still hold an abort line.
    while let Ok(ev) = rx.try_recv() {
        if let Event::Aborted(code) = ev {
            aborted.get_or_insert(code);
        }
    }
    close_all(&hosts);
    sig_handle.close();

    // abort(code) decides the exit code, whatever the other ranks did after it.
    if let Some(code) = aborted {
        return Ok(code);
    }
    if host_lost {
        return Ok(EXIT_HOST_LOST);
    }
    // The first failure decides: later ones are mostly its consequences (ranks that failed
    // on `PeerLost` because of it), whatever their rank.
    let code = match failures.first() {
        Some((_, c)) => *c,
        None => stop_code.unwrap_or(0),
    };
    Ok(code)
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

/// Mark a host as lost (ending its session). If ranks still ran there, report it, count them
/// as gone and return true.
fn lose_host(h: &mut HostRun, why: &str, running: &mut [bool], left: &mut usize) -> bool {
    h.lost = true;
    if let Some(r) = &h.remote {
        r.kill();
    }
    let lost: Vec<usize> = h.ranks.iter().copied().filter(|&r| running[r]).collect();
    if lost.is_empty() {
        return false;
    }
    let list: Vec<String> = lost.iter().map(usize::to_string).collect();
    crate::say!(
        "ranks: lost host {} ({why}); rank(s) {} there cannot be reached; stopping the job",
        h.name,
        list.join(", ")
    );
    for &r in &lost {
        running[r] = false;
        *left -= 1;
    }
    true
}
