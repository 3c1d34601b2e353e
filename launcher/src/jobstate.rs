//! The launcher's job loop as a state machine: events in (a rank started or ended, an agent
//! spoke or fell silent, a signal, the clock), actions out (say a line, signal a host's
//! ranks, tell a host of an end elsewhere, ask for a diagnosis, ...). No processes, sockets
//! or threads: `job.rs` feeds it and carries the actions out; the tests here drive it alone.
//!
//! The rules live here, once: the first failure stops the job (unless `--keep-going`) and
//! sets the exit code; `abort(code)` ends the job with its code; a lost host ends it with
//! 255; `--timeout` with 124 after a diagnosis; signals to the launcher stop the job
//! (a second one kills at once); SIGUSR1 prints a diagnosis and the job goes on.

use std::time::{Duration, Instant};

use crate::diagnose::{explain, View};
use crate::proto::Status;

/// Exit code when `--timeout` stopped the job.
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit code when a host of the job was lost.
pub const EXIT_HOST_LOST: u8 = 255;
/// Exit code for a host's agent that could not start its ranks (a usage error).
pub const EXIT_USAGE: u8 = 2;
/// Silence from an agent after which its host counts as lost.
pub const HOST_SILENCE: Duration = Duration::from_secs(4);
#[cfg(test)]
const SIGINT: i32 = 2;
const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;
const SIGUSR1: i32 = 10;

/// What happened.
#[derive(Debug, Clone)]
pub enum Input {
    Started {
        rank: usize,
        pid: u32,
    },
    Exited {
        rank: usize,
        status: Status,
    },
    /// A rank called `abort(code)`.
    Aborted(u8),
    /// Host `host`'s agent could not start its ranks.
    AgentFailed {
        host: usize,
        why: String,
    },
    /// Host `host`'s agent sent everything (its ranks ended, their output is in).
    HostDone(usize),
    /// Host `host`'s session ended.
    HostGone {
        host: usize,
        why: String,
    },
    /// Word from host `host`'s agent (any message).
    Heard(usize),
    /// A signal to the launcher.
    Signal(i32),
    /// What the ranks of `host` are doing, for a diagnosis being gathered.
    Report {
        host: usize,
        views: Vec<(usize, View)>,
    },
    /// Time passed.
    Tick,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this line (the launcher's own, whole).
    Say(String),
    /// Send `sig` to every running rank of `host`.
    Signal { host: usize, sig: i32 },
    /// Tell `host` that `rank` (of another host) ended.
    RelayEnd {
        host: usize,
        rank: usize,
        status: Status,
    },
    /// Ask `host` what its ranks are doing (answer with `Input::Report`).
    AskReport { host: usize },
    /// Send a keep-alive to `host`.
    Ping { host: usize },
    /// End the session with `host` (it is lost).
    Drop { host: usize },
}

/// One host as the job loop sees it.
#[derive(Debug, Clone)]
pub struct HostState {
    pub name: String,
    pub ranks: Vec<usize>,
    /// Reached through an agent (not this process's own node).
    pub remote: bool,
    pub heard: Instant,
    pub done: bool,
    pub lost: bool,
}

struct Diagnosis {
    views: Vec<View>,
    waiting: Vec<usize>,
    until: Instant,
}

/// The state of a running job.
pub struct Job {
    hosts: Vec<HostState>,
    host_of: Vec<usize>,
    keep_going: bool,
    timeout: Option<(Instant, f64)>,
    grace: Duration,
    pids: Vec<Option<u32>>,
    running: Vec<bool>,
    left: usize,
    /// Failures in the order the launcher learned of them: `(rank, code)`.
    failures: Vec<(usize, u8)>,
    aborted: Option<u8>,
    stop_code: Option<u8>,
    kill_at: Option<Instant>,
    host_lost: bool,
    signalled: Vec<bool>,
    ended: Vec<Option<String>>,
    diag: Option<Diagnosis>,
    next_ping: Instant,
    drain_by: Option<Instant>,
    multi: bool,
}

/// The name of signal `sig`, as people know it.
pub fn signal_name(sig: i32) -> &'static str {
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

/// How a rank ended, in words, and the exit code it stands for.
pub fn describe(status: Status) -> (String, u8) {
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

impl Job {
    /// A job of `host_of.len()` ranks (rank r on host `host_of[r]`), starting `now`.
    pub fn new(
        hosts: Vec<HostState>,
        host_of: Vec<usize>,
        keep_going: bool,
        timeout: Option<f64>,
        grace: Duration,
        now: Instant,
    ) -> Job {
        let n = host_of.len();
        let multi = hosts.len() > 1 || hosts.iter().any(|h| h.remote);
        Job {
            hosts,
            host_of,
            keep_going,
            timeout: timeout.map(|t| (now + Duration::from_secs_f64(t), t)),
            grace,
            pids: vec![None; n],
            running: vec![true; n],
            left: n,
            failures: Vec::new(),
            aborted: None,
            stop_code: None,
            kill_at: None,
            host_lost: false,
            signalled: vec![false; n],
            ended: vec![None; n],
            diag: None,
            next_ping: now,
            drain_by: None,
            multi,
        }
    }

    /// Ranks still running.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Whether the job loop is over: every rank ended and every agent finished sending (or
    /// 3 s passed waiting for them).
    pub fn finished(&mut self, now: Instant) -> bool {
        if self.left > 0 {
            return false;
        }
        if self.hosts.iter().all(|h| !h.remote || h.done || h.lost) {
            return true;
        }
        now >= *self.drain_by.get_or_insert(now + Duration::from_secs(3))
    }

    /// When the loop should look again at the latest (for `Input::Tick`).
    pub fn next_wake(&self, now: Instant) -> Instant {
        let mut wake = self.kill_at.unwrap_or(now + Duration::from_secs(3600));
        if let (Some((d, _)), None) = (self.timeout, self.stop_code) {
            wake = wake.min(d);
        }
        if self.hosts.iter().any(|h| h.remote) {
            wake = wake.min(now + Duration::from_millis(250));
        }
        if let Some(d) = &self.diag {
            wake = wake.min(d.until);
        }
        if let Some(d) = self.drain_by {
            wake = wake.min(d);
        }
        wake
    }

    /// The job's exit code, once it is over.
    pub fn exit_code(&self) -> u8 {
        // abort(code) decides, whatever the other ranks did after it.
        if let Some(code) = self.aborted {
            return code;
        }
        if self.host_lost {
            return EXIT_HOST_LOST;
        }
        // The first failure decides: later ones are mostly its consequences (ranks that
        // failed on `PeerLost` because of it), whatever their rank.
        match self.failures.first() {
            Some((_, c)) => *c,
            None => self.stop_code.unwrap_or(0),
        }
    }

    /// The rank whose failure decided the exit code, if one did.
    pub fn cause(&self) -> Option<usize> {
        if self.aborted.is_some() || self.host_lost {
            return None;
        }
        self.failures.first().map(|f| f.0)
    }

    /// A diagnosis still waiting for answers: print what there is (the loop is ending).
    pub fn flush(&mut self, out: &mut Vec<Action>) {
        if let Some(d) = self.diag.take() {
            Self::print(d, out);
        }
    }

    fn print(d: Diagnosis, out: &mut Vec<Action>) {
        for line in explain(&d.views, ranks::board::now_ms()) {
            out.push(Action::Say(format!("ranks: {line}")));
        }
    }

    fn where_(&self, r: usize) -> String {
        let h = &self.hosts[self.host_of[r]];
        if self.multi {
            format!(" on {}", h.name)
        } else {
            String::new()
        }
    }

    /// Stop every running rank: `sig` to each host that still has some.
    fn stop_all(&mut self, sig: i32, out: &mut Vec<Action>) {
        for (r, s) in self.signalled.iter_mut().enumerate() {
            if self.running[r] {
                *s = true;
            }
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.ranks.iter().any(|&r| self.running[r]) {
                out.push(Action::Signal { host: i, sig });
            }
        }
    }

    /// Stop the job with `code` (TERM now, KILL after the grace period), if not stopping yet.
    fn stop(&mut self, code: u8, now: Instant, out: &mut Vec<Action>) {
        if self.stop_code.is_some() {
            return;
        }
        self.stop_code = Some(code);
        self.stop_all(SIGTERM, out);
        self.kill_at = Some(now + self.grace);
    }

    fn start_diagnosis(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.diag.is_some() {
            return;
        }
        let views = (0..self.running.len())
            .map(|r| match (&self.ended[r], self.running[r]) {
                (Some(how), _) => View::Ended(how.clone()),
                (None, false) => View::Ended("ended".into()),
                (None, true) => View::Unknown,
            })
            .collect();
        let mut waiting = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            if !(h.lost || h.done) {
                out.push(Action::AskReport { host: i });
                waiting.push(i);
            }
        }
        self.diag = Some(Diagnosis {
            views,
            waiting,
            until: now + Duration::from_secs(1),
        });
    }

    /// Host `i` is lost: end its session, and if ranks still ran there, say so, count them
    /// as gone and stop the job with 255.
    fn lose_host(&mut self, i: usize, why: &str, now: Instant, out: &mut Vec<Action>) {
        if self.hosts[i].lost {
            return;
        }
        self.hosts[i].lost = true;
        out.push(Action::Drop { host: i });
        let lost: Vec<usize> = self.hosts[i]
            .ranks
            .iter()
            .copied()
            .filter(|&r| self.running[r])
            .collect();
        if lost.is_empty() {
            return;
        }
        let list: Vec<String> = lost.iter().map(usize::to_string).collect();
        out.push(Action::Say(format!(
            "ranks: lost host {} ({why}); rank(s) {} there cannot be reached; stopping the job",
            self.hosts[i].name,
            list.join(", ")
        )));
        for &r in &lost {
            self.running[r] = false;
            self.left -= 1;
        }
        self.host_lost = true;
        self.stop(EXIT_HOST_LOST, now, out);
    }

    fn rank_exited(&mut self, rank: usize, status: Status, now: Instant, out: &mut Vec<Action>) {
        if rank >= self.running.len() || !self.running[rank] {
            return;
        }
        self.running[rank] = false;
        self.left -= 1;
        let (why, code) = describe(status);
        self.ended[rank] = Some(why.clone());
        // Every other host learns of the end at once (its ranks read it from their board).
        for (j, h) in self.hosts.iter().enumerate() {
            if j != self.host_of[rank] && !h.lost && !h.done {
                out.push(Action::RelayEnd {
                    host: j,
                    rank,
                    status,
                });
            }
        }
        let ok = matches!(status, Status::Code(0));
        // A rank that we signalled and that died of a signal did not fail by itself.
        let ours = self.signalled[rank] && matches!(status, Status::Signal(_));
        if ok || ours {
            return;
        }
        let pid = self.pids[rank].unwrap_or(0);
        out.push(Action::Say(format!(
            "ranks: rank {rank} (pid {pid}{}) {why}",
            self.where_(rank)
        )));
        self.failures.push((rank, code));
        if self.stop_code.is_none() && !self.keep_going {
            if self.left > 0 {
                out.push(Action::Say(format!(
                    "ranks: stopping the other {} rank(s)",
                    self.left
                )));
            }
            self.stop(code, now, out);
        }
    }

    /// Take in one event; the actions to carry out, in order.
    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Started { rank, pid } => {
                if let Some(p) = self.pids.get_mut(rank) {
                    *p = Some(pid);
                }
            }
            Input::Exited { rank, status } => self.rank_exited(rank, status, now, &mut out),
            Input::Aborted(code) => {
                if self.aborted.is_none() {
                    self.aborted = Some(code);
                    if self.stop_code.is_none() && self.left > 0 {
                        out.push(Action::Say(format!(
                            "ranks: stopping the other {} rank(s)",
                            self.left
                        )));
                    }
                    self.stop(code, now, &mut out);
                }
            }
            Input::AgentFailed { host, why } => {
                // The first failure is the news; others are mostly the same one.
                if self.stop_code.is_none() {
                    out.push(Action::Say(format!(
                        "ranks: error: host {}: {why}",
                        self.hosts[host].name
                    )));
                }
                self.hosts[host].done = true;
                for r in self.hosts[host].ranks.clone() {
                    if self.running[r] {
                        self.running[r] = false;
                        self.left -= 1;
                    }
                }
                self.stop(EXIT_USAGE, now, &mut out);
            }
            Input::HostDone(host) => self.hosts[host].done = true,
            Input::HostGone { host, why } => self.lose_host(host, &why, now, &mut out),
            Input::Heard(host) => self.hosts[host].heard = now,
            Input::Signal(SIGUSR1) => self.start_diagnosis(now, &mut out),
            Input::Signal(sig) => {
                if self.stop_code.is_none() {
                    out.push(Action::Say(format!(
                        "ranks: got {}; stopping the job",
                        signal_name(sig)
                    )));
                    self.start_diagnosis(now, &mut out);
                    self.stop((128 + sig) as u8, now, &mut out);
                } else {
                    // A second Ctrl-C: do not wait for the grace period.
                    self.stop_all(SIGKILL, &mut out);
                }
            }
            Input::Report { host, views } => {
                if let Some(d) = &mut self.diag {
                    for (r, v) in views {
                        if let Some(slot) = d.views.get_mut(r) {
                            *slot = v;
                        }
                    }
                    d.waiting.retain(|&h| h != host);
                }
            }
            Input::Tick => {}
        }
        self.timers(now, &mut out);
        out
    }

    fn timers(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(k) = self.kill_at {
            if now >= k {
                self.stop_all(SIGKILL, out);
                self.kill_at = None;
            }
        }
        if let (Some((d, secs)), None) = (self.timeout, self.stop_code) {
            if now >= d {
                let still: Vec<String> = (0..self.running.len())
                    .filter(|&r| self.running[r])
                    .map(|r| r.to_string())
                    .collect();
                out.push(Action::Say(format!(
                    "ranks: timeout after {secs:.1} s; rank(s) still running: {}",
                    still.join(", ")
                )));
                self.start_diagnosis(now, out);
                self.stop(EXIT_TIMEOUT, now, out);
            }
        }
        if self
            .diag
            .as_ref()
            .is_some_and(|d| d.waiting.is_empty() || now >= d.until)
        {
            if let Some(d) = self.diag.take() {
                Self::print(d, out);
            }
        }
        if self.hosts.iter().any(|h| h.remote) {
            if now >= self.next_ping {
                self.next_ping = now + Duration::from_secs(1);
                for (i, h) in self.hosts.iter().enumerate() {
                    if h.remote && !h.lost && !h.done {
                        out.push(Action::Ping { host: i });
                    }
                }
            }
            for i in 0..self.hosts.len() {
                let h = &self.hosts[i];
                if h.remote && !h.lost && !h.done && now.duration_since(h.heard) > HOST_SILENCE {
                    let why = format!("no keep-alive for {} s", HOST_SILENCE.as_secs());
                    self.lose_host(i, &why, now, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, ranks: &[usize], remote: bool, now: Instant) -> HostState {
        HostState {
            name: name.into(),
            ranks: ranks.to_vec(),
            remote,
            heard: now,
            done: false,
            lost: false,
        }
    }

    fn one_host(n: usize, keep_going: bool, timeout: Option<f64>) -> (Job, Instant) {
        let now = Instant::now();
        let ranks: Vec<usize> = (0..n).collect();
        let job = Job::new(
            vec![host("localhost", &ranks, false, now)],
            vec![0; n],
            keep_going,
            timeout,
            Duration::from_secs(1),
            now,
        );
        (job, now)
    }

    fn says(a: &[Action]) -> Vec<&str> {
        a.iter()
            .filter_map(|a| match a {
                Action::Say(s) => Some(s.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_clean_job_exits_zero() {
        let (mut j, now) = one_host(2, false, None);
        for r in 0..2 {
            let a = j.on(
                Input::Exited {
                    rank: r,
                    status: Status::Code(0),
                },
                now,
            );
            assert!(a.is_empty(), "{a:?}");
        }
        assert!(j.finished(now));
        assert_eq!(j.exit_code(), 0);
    }

    #[test]
    fn the_first_failure_stops_the_job_and_sets_the_code() {
        let (mut j, now) = one_host(4, false, None);
        j.on(Input::Started { rank: 3, pid: 42 }, now);
        let a = j.on(
            Input::Exited {
                rank: 3,
                status: Status::Signal(9),
            },
            now,
        );
        assert_eq!(
            says(&a),
            [
                "ranks: rank 3 (pid 42) was killed by signal 9 (SIGKILL)",
                "ranks: stopping the other 3 rank(s)"
            ]
        );
        assert!(a.contains(&Action::Signal { host: 0, sig: 15 }));
        // A lower rank failing afterwards (on PeerLost) does not change the code.
        let a = j.on(
            Input::Exited {
                rank: 0,
                status: Status::Code(1),
            },
            now,
        );
        assert_eq!(says(&a), ["ranks: rank 0 (pid 0) exited with code 1"]);
        // Ranks we signalled that die of it are no failures.
        let a = j.on(
            Input::Exited {
                rank: 1,
                status: Status::Signal(15),
            },
            now,
        );
        assert!(says(&a).is_empty());
        // Still running after the grace period: SIGKILL.
        let a = j.on(Input::Tick, now + Duration::from_millis(1100));
        assert_eq!(a, [Action::Signal { host: 0, sig: 9 }]);
        j.on(
            Input::Exited {
                rank: 2,
                status: Status::Signal(9),
            },
            now,
        );
        assert!(j.finished(now));
        assert_eq!(j.exit_code(), 137);
    }

    #[test]
    fn keep_going_lets_the_others_finish_and_still_reports() {
        let (mut j, now) = one_host(3, true, None);
        let a = j.on(
            Input::Exited {
                rank: 1,
                status: Status::Code(3),
            },
            now,
        );
        assert_eq!(says(&a), ["ranks: rank 1 (pid 0) exited with code 3"]);
        assert!(!a.iter().any(|a| matches!(a, Action::Signal { .. })));
        for r in [0, 2] {
            j.on(
                Input::Exited {
                    rank: r,
                    status: Status::Code(0),
                },
                now,
            );
        }
        assert_eq!(j.exit_code(), 3);
        assert_eq!(j.cause(), Some(1), "rank 1's failure is the cause");
    }

    #[test]
    fn a_clean_or_stopped_job_has_no_failing_rank_to_show() {
        let (mut j, now) = one_host(2, false, None);
        j.on(Input::Signal(2), now);
        for r in 0..2 {
            j.on(
                Input::Exited {
                    rank: r,
                    status: Status::Signal(15),
                },
                now,
            );
        }
        assert_eq!(j.exit_code(), 130);
        assert_eq!(j.cause(), None);
    }

    #[test]
    fn abort_decides_the_code_even_with_keep_going() {
        let (mut j, now) = one_host(3, true, None);
        let a = j.on(Input::Aborted(7), now);
        assert!(a.contains(&Action::Signal { host: 0, sig: 15 }));
        j.on(
            Input::Exited {
                rank: 0,
                status: Status::Code(1),
            },
            now,
        );
        assert_eq!(j.exit_code(), 7);
    }

    #[test]
    fn a_timeout_diagnoses_then_stops_with_124() {
        let (mut j, now) = one_host(2, false, Some(5.0));
        assert!(j.on(Input::Tick, now + Duration::from_secs(4)).is_empty());
        let a = j.on(Input::Tick, now + Duration::from_secs(5));
        assert_eq!(
            says(&a),
            ["ranks: timeout after 5.0 s; rank(s) still running: 0, 1"]
        );
        assert!(a.contains(&Action::AskReport { host: 0 }));
        assert!(a.contains(&Action::Signal { host: 0, sig: 15 }));
        let a = j.on(
            Input::Report {
                host: 0,
                views: vec![(0, View::Running), (1, View::Running)],
            },
            now + Duration::from_secs(5),
        );
        assert_eq!(says(&a)[0], "ranks: what each rank is doing:");
        assert_eq!(j.exit_code(), 124);
    }

    #[test]
    fn sigusr1_diagnoses_and_the_job_goes_on() {
        let (mut j, now) = one_host(1, false, None);
        let a = j.on(Input::Signal(SIGUSR1), now);
        assert_eq!(a, [Action::AskReport { host: 0 }]);
        // No answer within a second: what is known is printed.
        let a = j.on(Input::Tick, now + Duration::from_millis(1001));
        assert_eq!(
            says(&a)[1],
            "ranks:   rank 0: unknown (its host did not answer)"
        );
        assert!(!a.iter().any(|a| matches!(a, Action::Signal { .. })));
        assert!(!j.finished(now));
    }

    #[test]
    fn ctrl_c_stops_and_a_second_one_kills() {
        let (mut j, now) = one_host(2, false, None);
        let a = j.on(Input::Signal(SIGINT), now);
        assert_eq!(says(&a)[0], "ranks: got SIGINT; stopping the job");
        assert!(a.contains(&Action::Signal { host: 0, sig: 15 }));
        let a = j.on(Input::Signal(SIGINT), now);
        assert!(a.contains(&Action::Signal { host: 0, sig: 9 }));
        for r in 0..2 {
            j.on(
                Input::Exited {
                    rank: r,
                    status: Status::Signal(15),
                },
                now,
            );
        }
        assert_eq!(j.exit_code(), 130);
    }

    #[test]
    fn ends_are_relayed_and_silent_hosts_are_lost() {
        let now = Instant::now();
        let mut j = Job::new(
            vec![
                host("here", &[0], false, now),
                host("a", &[1], true, now),
                host("b", &[2], true, now),
            ],
            vec![0, 1, 2],
            true,
            None,
            Duration::from_secs(1),
            now,
        );
        let a = j.on(
            Input::Exited {
                rank: 1,
                status: Status::Code(0),
            },
            now,
        );
        assert_eq!(
            a.iter()
                .filter(|a| matches!(a, Action::RelayEnd { .. }))
                .count(),
            2
        );
        assert!(a.contains(&Action::RelayEnd {
            host: 0,
            rank: 1,
            status: Status::Code(0)
        }));
        j.on(Input::HostDone(1), now);
        // Host b says nothing for too long.
        let later = now + HOST_SILENCE + Duration::from_millis(1);
        let a = j.on(Input::Tick, later);
        assert!(a.contains(&Action::Drop { host: 2 }));
        assert!(says(&a)[0].starts_with("ranks: lost host b (no keep-alive for 4 s); rank(s) 2"));
        assert_eq!(j.left(), 1);
        j.on(
            Input::Exited {
                rank: 0,
                status: Status::Signal(15),
            },
            later,
        );
        assert!(j.finished(later));
        assert_eq!(j.exit_code(), 255);
    }
}
