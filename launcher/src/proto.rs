//! What the launcher and its agents (`ranks agent`, started over ssh) say to each other.
//!
//! Messages travel over the ssh session's stdin and stdout as frames: a 4-byte little-endian
//! length, then the message in postcard. Both sides check the length before allocating.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Largest frame either side accepts (a rank's output line is at most 64 KiB).
const MAX_FRAME: usize = 16 << 20;
/// Largest piece of a trace in one `FromAgent::Trace` message.
pub const TRACE_PIECE: usize = 8 << 20;
/// First bytes an agent writes, so the launcher can tell it from a login banner or a shell
/// complaining that the program is missing.
pub const HELLO: &[u8; 8] = b"ranks/a3";

/// Everything an agent needs to run its share of the job.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct NodeSpec {
    pub job: String,
    /// This host's index in the job and its name.
    pub host_index: u32,
    pub host_name: String,
    /// The world ranks this host runs.
    pub ranks: Vec<usize>,
    /// Host index of every rank of the world.
    pub hosts: Vec<u32>,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The launcher's working directory (ranks start there when it exists on this host).
    pub cwd: String,
    pub transport: ranks::config::TransportKind,
    /// The job's QUIC credentials (file name, bytes).
    pub credentials: Vec<(String, Vec<u8>)>,
    /// How to choose the address QUIC binds to.
    pub bind: Bind,
    /// `LOW-HIGH` ports for QUIC, if restricted.
    pub ports: Option<String>,
    /// Ranks record a trace (`--trace`), sent back with `FromAgent::Trace` at the end.
    pub trace: bool,
}

/// The address QUIC endpoints of a host bind to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    /// The address the launcher reached this host at (over ssh), or loopback on one host.
    Default,
    /// This IP address, or this host's address inside this network (`10.1.0.0/16`).
    Addr(String),
    /// The IPv4 address of this network interface.
    Iface(String),
}

/// Launcher → agent.
#[derive(Serialize, Deserialize, Debug)]
pub enum ToAgent {
    Start(Box<NodeSpec>),
    /// QUIC addresses of ranks on other hosts.
    Addresses(Vec<(usize, String)>),
    /// Send this signal to every rank still running (SIGTERM, then SIGKILL).
    Signal(i32),
    /// A rank of another host ended: record it on this host's board.
    RankEnded {
        rank: usize,
        status: Status,
    },
    /// Say what each rank here is blocked in.
    Report,
    /// The launcher is alive.
    Ping,
}

/// How a rank ended.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Code(i32),
    Signal(i32),
    Unknown,
}

/// Agent → launcher.
#[derive(Serialize, Deserialize, Debug)]
pub enum FromAgent {
    /// The agent runs; `launcher_ip` is the address it sees the launcher at (from ssh).
    Ready {
        launcher_ip: Option<String>,
    },
    /// The agent could not start its ranks (program missing, bad address, ...).
    Failed(String),
    Started {
        rank: usize,
        pid: u32,
    },
    /// A rank published its QUIC address.
    Address {
        rank: usize,
        addr: String,
    },
    /// Output of a rank: whole lines, `err` for stderr.
    Output {
        rank: usize,
        err: bool,
        line: Vec<u8>,
    },
    Exited {
        rank: usize,
        status: Status,
    },
    /// What each rank of this host is blocked in (answer to `Report`).
    Blocked(Vec<(usize, crate::diagnose::View)>),
    /// A piece of the trace a rank recorded (`--trace`): pieces of one rank come in order,
    /// `last` on the final one.
    Trace {
        rank: usize,
        piece: Vec<u8>,
        last: bool,
    },
    /// Every rank has exited and its output (and trace) was sent.
    Done,
    /// The agent is alive.
    Pong,
}

pub fn write_msg<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let body = postcard::to_allocvec(msg).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()
}

/// The next message, `Ok(None)` at a clean end of stream.
pub fn read_msg<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a {len}-byte message is larger than the limit of {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("malformed message: {e}")))
}
