//! The launcher's side of an agent on another host: the ssh session that runs `ranks agent`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proto::{read_msg, write_msg, FromAgent, ToAgent, HELLO};

/// How agents on other hosts are started.
#[derive(Debug, Clone)]
pub enum Via {
    /// `ssh` (the command and its own options).
    Ssh(Vec<String>),
    /// `srun`, one task on the node, inside the Slurm allocation the launcher runs in.
    Srun,
}

/// What a remote host's session reports.
pub enum HostEvent {
    Msg(FromAgent),
    /// The session's output ended or broke.
    Gone(String),
}

pub struct Remote {
    pub name: String,
    child: Mutex<Child>,
    to_agent: Mutex<Option<Sender<ToAgent>>>,
    /// The last lines ssh (or the remote shell) wrote to stderr, for error messages.
    stderr_tail: Arc<Mutex<Vec<String>>>,
    /// Once the agent is up, stderr lines are shown as they come.
    live: Arc<AtomicBool>,
    agent: String,
}

/// Quote for a POSIX shell (the remote login shell runs the command ssh hands it).
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Remote {
    /// Start `agent agent` on `host` through `ssh` (the command and its own options);
    /// everything the session says arrives as `wrap(event)` on `events`.
    pub fn start<E: Send + 'static>(
        host: &str,
        via: &Via,
        agent: &str,
        events: Sender<E>,
        wrap: impl Fn(HostEvent) -> E + Send + 'static,
    ) -> Result<Remote, String> {
        let words = match via {
            Via::Ssh(ssh) => ssh.clone(),
            Via::Srun => crate::slurm::srun_agent(host),
        };
        let (prog, opts) = words
            .split_first()
            .ok_or_else(|| "--ssh is empty".to_string())?;
        let mut cmd = Command::new(prog);
        cmd.args(opts);
        match via {
            Via::Ssh(_) => {
                cmd.args([
                    "-T",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=10",
                    "-o",
                    "ServerAliveInterval=1",
                    "-o",
                    "ServerAliveCountMax=5",
                    "--",
                    host,
                ])
                .arg(format!("exec {} agent", shell_quote(agent)));
            }
            // srun runs the program itself, no shell in between.
            Via::Srun => {
                cmd.args([agent, "agent"]);
            }
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: Ctrl-C on the terminal reaches the launcher, which stops the
        // job through the agents, not ssh itself.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("host {host}: could not run {prog}: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");

        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let live = Arc::new(AtomicBool::new(false));
        {
            let (tail, live, host) = (stderr_tail.clone(), live.clone(), host.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if live.load(SeqCst) {
                        crate::say!("ranks: host {host}: {line}");
                    }
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.push(line);
                    if t.len() > 20 {
                        t.remove(0);
                    }
                }
            });
        }
        // Writes go through a thread, so a stalled network never blocks the launcher.
        let (tx, rx) = mpsc::channel::<ToAgent>();
        std::thread::spawn(move || {
            let mut w = std::io::BufWriter::new(stdin);
            for m in rx {
                if write_msg(&mut w, &m).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let why = match find_hello(&mut r) {
                Err(e) => e,
                Ok(()) => loop {
                    match read_msg::<FromAgent>(&mut r) {
                        Ok(Some(m)) => {
                            if events.send(wrap(HostEvent::Msg(m))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break "its session ended".to_string(),
                        Err(e) => break format!("its session broke: {e}"),
                    }
                },
            };
            let _ = events.send(wrap(HostEvent::Gone(why)));
        });
        Ok(Remote {
            name: host.to_string(),
            child: Mutex::new(child),
            to_agent: Mutex::new(Some(tx)),
            stderr_tail,
            live,
            agent: agent.to_string(),
        })
    }

    pub fn send(&self, msg: ToAgent) {
        if let Some(tx) = &*self.to_agent.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = tx.send(msg);
        }
    }

    /// The agent is up: show what the session writes to stderr from now on.
    pub fn set_live(&self) {
        self.live.store(true, SeqCst);
    }

    /// End the session from our side (the agent sees its input end).
    pub fn close(&self) {
        self.to_agent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    pub fn kill(&self) {
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }

    /// Wait up to `limit` for ssh to exit; kill it after that.
    pub fn reap(&self, limit: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if Instant::now() >= until {
                let _ = c.kill();
                return c.wait().ok();
            }
            drop(c);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Why the session ended before the agent came up, in words a user can act on.
    pub fn startup_failure(&self, why: &str) -> String {
        let status = self.reap(Duration::from_secs(2));
        // Let the stderr reader catch up with what ssh printed last.
        std::thread::sleep(Duration::from_millis(50));
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect::<Vec<_>>();
        let last = tail.last().cloned().unwrap_or_default();
        let host = &self.name;
        match status.and_then(|s| s.code()) {
            Some(127) => format!(
                "host {host}: the agent program {} was not found there (give its path there with --agent PATH){}",
                self.agent,
                if last.is_empty() { String::new() } else { format!(": {last}") }
            ),
            Some(126) => format!(
                "host {host}: the agent program {} cannot be run there: {last}",
                self.agent
            ),
            Some(255) => format!(
                "host {host}: ssh failed: {}",
                if last.is_empty() { "no message" } else { last.as_str() }
            ),
            Some(c) => format!("host {host}: the agent ended with code {c} before starting ({why}){}",
                if last.is_empty() { String::new() } else { format!(": {last}") }),
            None => format!("host {host}: the agent did not start ({why})"),
        }
    }
}

/// Skip whatever a login script printed until the agent's greeting.
fn find_hello(r: &mut impl Read) -> Result<(), String> {
    let mut window = Vec::with_capacity(HELLO.len());
    let mut skipped = 0usize;
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err("it ended before the agent started".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading from it failed: {e}")),
        }
        window.push(b[0]);
        if window.len() > HELLO.len() {
            window.remove(0);
            skipped += 1;
            if skipped > 1 << 20 {
                return Err("it printed 1 MiB without the agent's greeting".into());
            }
        }
        if window == HELLO {
            return Ok(());
        }
    }
}
