//! A PMI-2 client: how a process started by Slurm's `srun --mpi=pmi2` (no `ranks run`) learns
//! its rank and size and exchanges keys with the other processes of the step.
//!
//! srun hands each task one end of a socket in `PMI_FD`. The first request is a PMI-1 style
//! line (`cmd=init pmi_version=2 pmi_subversion=0`); every later message, both ways, is a
//! 6-character decimal length (left-justified, space-padded, not counting itself) followed by
//! `cmd=NAME;key=value;...;`. Values may not contain `;`. A `kvs-get` sees only what was put
//! before a `kvs-fence` that every task joined.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use crate::error::{Error, Result};

/// A connection to the PMI-2 server of this task's step.
pub(crate) struct Pmi {
    stream: UnixStream,
    pub rank: usize,
    pub size: usize,
    pub jobid: String,
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Bootstrap(format!("PMI-2 (srun --mpi=pmi2): {what}"))
}

/// A message: its length in 6 characters, then the body.
fn frame(body: &str) -> Vec<u8> {
    format!("{:<6}{body}", body.len()).into_bytes()
}

/// `cmd=x;a=1;b=;` → {cmd: x, a: 1, b: ""}.
fn parse(body: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for pair in body.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad(format!("malformed reply {body:?}")))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl Pmi {
    /// The step's PMI-2 server, if this process was started by `srun --mpi=pmi2`.
    pub(crate) fn from_env() -> Result<Option<Pmi>> {
        let Some(fd) = std::env::var("PMI_FD").ok() else {
            return Ok(None);
        };
        let fd: i32 = fd
            .trim()
            .parse()
            .map_err(|_| bad(format!("PMI_FD={fd:?} is not a descriptor")))?;
        // The descriptor must be an open socket of ours before we own it.
        let what = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map_err(|e| bad(format!("PMI_FD={fd} is not open: {e}")))?;
        if fd < 3 || !what.to_string_lossy().starts_with("socket:") {
            return Err(bad(format!("PMI_FD={fd} is not a socket")));
        }
        let stream = adopt(fd);
        let jobid = std::env::var("PMI_JOBID").unwrap_or_default();
        let rank = std::env::var("PMI_RANK").unwrap_or_else(|_| "0".into());
        Pmi::connect(stream, &jobid, &rank).map(Some)
    }

    /// Say hello and `fullinit` on `stream`.
    pub(crate) fn connect(mut stream: UnixStream, jobid: &str, rank: &str) -> Result<Pmi> {
        let io = |e: std::io::Error| bad(format!("talking to srun: {e}"));
        // One write, then wait for the answer (the server reads this line with one read).
        stream
            .write_all(b"cmd=init pmi_version=2 pmi_subversion=0\n")
            .map_err(io)?;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            if stream.read(&mut b).map_err(io)? == 0 || line.len() > 1024 {
                return Err(bad("the server closed the connection during init"));
            }
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line);
        if !line.contains("rc=0") {
            return Err(bad(format!("init refused: {}", line.trim())));
        }
        let mut pmi = Pmi {
            stream,
            rank: 0,
            size: 1,
            jobid: jobid.to_string(),
        };
        let r = pmi.request(&format!(
            "cmd=fullinit;pmijobid={jobid};pmirank={rank};threaded=FALSE;"
        ))?;
        let num = |k: &str| -> Result<usize> {
            r.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("fullinit gave no {k}")))
        };
        pmi.rank = num("rank")?;
        pmi.size = num("size")?;
        if pmi.size == 0 || pmi.rank >= pmi.size {
            return Err(bad(format!("rank {} of {}", pmi.rank, pmi.size)));
        }
        if pmi.jobid.is_empty() {
            let r = pmi.request("cmd=job-getid;")?;
            pmi.jobid = r.get("jobid").cloned().unwrap_or_default();
        }
        Ok(pmi)
    }

    /// Send one request and read its reply; a non-zero `rc` is an error.
    fn request(&mut self, body: &str) -> Result<HashMap<String, String>> {
        let io = |e: std::io::Error| bad(format!("talking to srun: {e}"));
        self.stream.write_all(&frame(body)).map_err(io)?;
        let mut len = [0u8; 6];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len: usize = std::str::from_utf8(&len)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&n| n < 1_000_000)
            .ok_or_else(|| bad(format!("bad length {len:?}")))?;
        let mut reply = vec![0u8; len];
        self.stream.read_exact(&mut reply).map_err(io)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let map = parse(&reply)?;
        let want = body
            .strip_prefix("cmd=")
            .and_then(|b| b.split(';').next())
            .map(|c| format!("{c}-response"));
        if map.get("cmd") != want.as_ref() {
            return Err(bad(format!("asked {body:?}, got {reply:?}")));
        }
        if map.get("rc").is_some_and(|rc| rc != "0") {
            let why = map.get("errmsg").cloned().unwrap_or(reply.clone());
            return Err(bad(format!("{body:?} failed: {why}")));
        }
        Ok(map)
    }

    /// Publish `key` (visible to the others after the next fence). Keys up to 64 bytes,
    /// values up to 1024, without `;`.
    pub(crate) fn put(&mut self, key: &str, value: &str) -> Result<()> {
        if key.len() > 64 || value.len() > 1024 || (key.to_string() + value).contains([';', '=']) {
            return Err(bad(format!("cannot store {key:?}={value:?}")));
        }
        self.request(&format!("cmd=kvs-put;key={key};value={value};"))
            .map(drop)
    }

    /// Wait until every task of the step reached this fence (puts before it are visible).
    pub(crate) fn fence(&mut self) -> Result<()> {
        self.request("cmd=kvs-fence;").map(drop)
    }

    /// Ask srun to end the whole step (every task, on every node) with `msg` in its log. No
    /// answer comes: the caller exits next.
    pub(crate) fn abort(&mut self, msg: &str) {
        let msg = msg.replace([';', '='], ",");
        let _ = self
            .stream
            .write_all(&frame(&format!("cmd=abort;isworld=TRUE;msg={msg};")));
    }

    /// A key another task put before the last fence.
    pub(crate) fn get(&mut self, key: &str) -> Result<Option<String>> {
        let r = self.request(&format!(
            "cmd=kvs-get;jobid={};srcid=-1;key={key};",
            self.jobid
        ))?;
        Ok(
            match r.get("found").map(|f| f.eq_ignore_ascii_case("true")) {
                Some(true) => r.get("value").cloned(),
                _ => None,
            },
        )
    }
}

/// Own the descriptor srun gave us.
fn adopt(fd: i32) -> UnixStream {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was checked above to be an open socket; srun gave it to this process for
    // PMI and nothing else in it uses the descriptor, so owning (and closing) it here is sound.
    unsafe { UnixStream::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A PMI-2 server as Slurm's speaks it, for `n` tasks' worth of keys, serving one task.
    fn server(mut s: UnixStream, rank: usize, size: usize, store: Vec<(String, String)>) {
        let mut line = String::new();
        std::io::BufReader::new(&mut s)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "cmd=init pmi_version=2 pmi_subversion=0\n");
        s.write_all(b"cmd=response_to_init rc=0 pmi_version=2 pmi_subversion=0\n")
            .unwrap();
        let mut kv: HashMap<String, String> = store.into_iter().collect();
        let mut pending = Vec::new();
        loop {
            let mut len = [0u8; 6];
            if s.read_exact(&mut len).is_err() {
                return;
            }
            let n: usize = std::str::from_utf8(&len).unwrap().trim().parse().unwrap();
            let mut body = vec![0u8; n];
            s.read_exact(&mut body).unwrap();
            let body = String::from_utf8(body).unwrap();
            assert!(body.ends_with(';'), "{body}");
            let m = parse(&body).unwrap();
            let reply = match m["cmd"].as_str() {
                "fullinit" => {
                    assert!(m.contains_key("pmijobid") && m.contains_key("threaded"));
                    format!("cmd=fullinit-response;rc=0;pmi-version=2;pmi-subversion=0;rank={rank};size={size};appnum=-1;debugged=FALSE;pmiverbose=FALSE;")
                }
                "kvs-put" => {
                    pending.push((m["key"].clone(), m["value"].clone()));
                    "cmd=kvs-put-response;rc=0;".into()
                }
                "kvs-fence" => {
                    kv.extend(pending.drain(..));
                    "cmd=kvs-fence-response;rc=0;".into()
                }
                "kvs-get" => match kv.get(&m["key"]) {
                    Some(v) => format!("cmd=kvs-get-response;rc=0;found=TRUE;value={v};"),
                    None => "cmd=kvs-get-response;rc=0;found=FALSE;".into(),
                },
                other => panic!("unexpected {other}"),
            };
            s.write_all(&frame(&reply)).unwrap();
        }
    }

    #[test]
    fn init_put_fence_get_against_a_slurm_like_server() {
        let (a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            server(b, 2, 4, vec![("host-0".into(), "n1".into())]);
        });
        let mut p = Pmi::connect(a, "12.0", "2").unwrap();
        assert_eq!((p.rank, p.size), (2, 4));
        assert_eq!(p.get("host-0").unwrap().as_deref(), Some("n1"));
        p.put("host-2", "n2").unwrap();
        assert_eq!(
            p.get("host-2").unwrap(),
            None,
            "not visible before the fence"
        );
        p.fence().unwrap();
        assert_eq!(p.get("host-2").unwrap().as_deref(), Some("n2"));
        assert!(p.put("bad;key", "x").is_err());
        drop(p);
        t.join().unwrap();
    }

    #[test]
    fn a_refused_init_is_a_clear_error() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut line = String::new();
            std::io::BufReader::new(&mut b)
                .read_line(&mut line)
                .unwrap();
            b.write_all(b"cmd=response_to_init rc=-1\n").unwrap();
        });
        let e = Pmi::connect(a, "1.0", "0").err().unwrap().to_string();
        assert!(e.contains("init refused"), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn frames_have_a_six_character_length() {
        assert_eq!(frame("cmd=kvs-fence;"), b"14    cmd=kvs-fence;");
    }
}
