//! The job board: one small shared-memory file per host with a slot for every rank of the job.
//!
//! The host's node (the launcher or an agent) writes how each rank ended (its own ranks as
//! they exit, other hosts' ranks as the launcher relays their ends), so every rank learns of
//! a death at once, whatever transport it uses. Each rank writes what it is blocked in when a
//! wait goes to sleep, so the launcher can explain a stuck job.
//!
//! Layout (8-byte words; all access atomic, through [`SharedBlock`]):
//!
//! ```text
//! header   0 magic, 1 rank count, 2 generation (bumped whenever a rank's end is recorded)
//! slot r   0 state, 1 when it was recorded (ms since the epoch), 2 how it ended, 3 pid,
//!          4 record sequence (odd while written), 5 record length, 6 writer,
//!          7 the order in which ends were recorded (1 = first), 8.. the record (postcard)
//! ```

use std::path::Path;
use std::sync::atomic::Ordering::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::transport::shm::{RankState, SharedBlock};

const MAGIC: u64 = 0x524b_424f_4152_0001; // "RKBOAR" + layout version
const HEADER_WORDS: usize = 8;
const SLOT_WORDS: usize = 32;
const ORDER_WORD: usize = 7;
const RECORD_WORD: usize = 8;
const RECORD_BYTES: usize = (SLOT_WORDS - RECORD_WORD) * 8;

/// How a rank ended, as the node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl Ending {
    fn encode(self) -> u64 {
        match self {
            Ending::Code(c) => (1 << 32) | u64::from(c as u32),
            Ending::Signal(s) => (2 << 32) | u64::from(s as u32),
            Ending::Unknown => 0,
        }
    }

    fn decode(w: u64) -> Ending {
        match w >> 32 {
            1 => Ending::Code(w as u32 as i32),
            2 => Ending::Signal(w as u32 as i32),
            _ => Ending::Unknown,
        }
    }

    /// Whether this end is a failure (anything but exit code 0).
    pub fn failed(self) -> bool {
        self != Ending::Code(0)
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Code(0) => write!(f, "it exited"),
            Ending::Code(c) => write!(f, "it exited with code {c}"),
            Ending::Signal(s) => write!(f, "it was killed by signal {s}"),
            Ending::Unknown => write!(f, "it ended"),
        }
    }
}

/// What a rank is blocked in, as it last recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The point-to-point step it waits in: `recv`, `send`, `probe`, `wait`, ...
    pub op: String,
    /// Context id of the communicator.
    pub comm: u32,
    /// The world rank it waits on (`None`: any source, or nobody in particular).
    pub peer: Option<u32>,
    /// The tag it waits for (`None`: any tag or not applicable).
    pub tag: Option<i32>,
    pub bytes: u64,
    /// When it went to sleep (ms since the epoch).
    pub since_ms: u64,
    /// The call it is inside: a collective or a primitive.
    pub within: Option<Within>,
}

/// A collective or primitive call a blocked step belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Within {
    /// `barrier`, `all_reduce`, `Lock.acquire`, ...
    pub op: String,
    /// Context id of the communicator the call was made on.
    pub comm: u32,
    /// The collective's sequence number on that communicator (0 for primitives).
    pub seq: u64,
    /// The root of a rooted collective, the owner of a primitive.
    pub root: Option<u32>,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

static GLOBAL: std::sync::OnceLock<std::sync::Arc<Board>> = std::sync::OnceLock::new();

/// This process's board, once `init` mapped it (transports look at it on their way out).
#[cfg_attr(not(feature = "quic"), allow(dead_code))]
pub(crate) fn global() -> Option<&'static Board> {
    GLOBAL.get().map(|b| &**b)
}

/// Make `board` this process's board (the first one stays).
pub(crate) fn set_global(board: std::sync::Arc<Board>) {
    let _ = GLOBAL.set(board);
}

/// A mapped job board.
pub struct Board {
    block: SharedBlock,
    n: usize,
}

impl Board {
    fn size(n: usize) -> usize {
        (HEADER_WORDS + n * SLOT_WORDS) * 8
    }

    /// Create the board for `n` ranks at `path` (a node does this; the file goes with it).
    pub fn create(path: &Path, n: usize) -> Result<Board> {
        if n == 0 || n > 1 << 20 {
            return Err(Error::InvalidArgument(format!(
                "a job board holds 1..={} ranks, not {n}",
                1 << 20
            )));
        }
        let block = SharedBlock::create(path, Self::size(n))?;
        block.u64_at(1).store(n as u64, Relaxed);
        block.u64_at(0).store(MAGIC, Release);
        Ok(Board { block, n })
    }

    /// Map the board of a job of `n` ranks.
    pub fn open(path: &Path, n: usize) -> Result<Board> {
        let block = SharedBlock::open(path, Duration::ZERO)?;
        let bad = |what: String| Error::Bootstrap(format!("job board {}: {what}", path.display()));
        if block.len() < Self::size(n) {
            return Err(bad(format!(
                "{} bytes, expected {}",
                block.len(),
                Self::size(n)
            )));
        }
        if block.u64_at(0).load(Acquire) != MAGIC {
            return Err(bad("not a ranks job board of this version".into()));
        }
        let got = block.u64_at(1).load(Relaxed) as usize;
        if got != n {
            return Err(bad(format!("made for {got} ranks, this job has {n}")));
        }
        Ok(Board { block, n })
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.n
    }

    fn word(&self, rank: usize, w: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(rank < self.n && w < SLOT_WORDS);
        self.block.u64_at(HEADER_WORDS + rank * SLOT_WORDS + w)
    }

    /// Bumped every time a rank's end is recorded: unchanged means nobody ended.
    pub fn generation(&self) -> u64 {
        self.block.u64_at(2).load(Acquire)
    }

    /// Register the calling process as `rank`.
    pub fn attach(&self, rank: usize) {
        self.word(rank, 3)
            .store(u64::from(std::process::id()), Relaxed);
        self.word(rank, 0).store(RankState::Running as u64, Release);
    }

    /// Record that `rank` ended (the first record stands).
    pub fn set_ended(&self, rank: usize, how: Ending) {
        if rank >= self.n || self.ended(rank).is_some() {
            return;
        }
        let state = if how.failed() {
            RankState::Failed
        } else {
            RankState::Exited
        };
        let order = self.block.u64_at(2).fetch_add(1, AcqRel) + 1;
        self.word(rank, ORDER_WORD).store(order, Relaxed);
        self.word(rank, 2).store(how.encode(), Relaxed);
        self.word(rank, 1).store(now_ms(), Relaxed);
        self.word(rank, 0).store(state as u64, Release);
    }

    /// Where `rank`'s end stands among the recorded ends (1 = first), 0 if it has not ended.
    pub fn end_order(&self, rank: usize) -> u64 {
        if self.ended(rank).is_none() {
            return 0;
        }
        self.word(rank, ORDER_WORD).load(Relaxed)
    }

    /// How `rank` ended and how long ago it was recorded, if it did.
    pub fn ended(&self, rank: usize) -> Option<(Ending, Duration)> {
        let state = self.word(rank, 0).load(Acquire);
        if state != RankState::Exited as u64 && state != RankState::Failed as u64 {
            return None;
        }
        let how = Ending::decode(self.word(rank, 2).load(Relaxed));
        let at = self.word(rank, 1).load(Relaxed);
        Some((how, Duration::from_millis(now_ms().saturating_sub(at))))
    }

    /// Write `rec` as what `rank` is blocked in; `writer` tells threads of the rank apart.
    pub fn publish(&self, rank: usize, writer: u64, rec: &Blocked) {
        let mut buf = [0u8; RECORD_BYTES];
        let len = match postcard::to_slice(rec, &mut buf) {
            Ok(b) => b.len(),
            Err(_) => return, // too long to record; the table shows the rank as unknown
        };
        let seq = self.word(rank, 4);
        let s = seq.load(Relaxed);
        // Odd while written; if another thread of the rank is writing, its record will do.
        if s % 2 == 1 || seq.compare_exchange(s, s + 1, AcqRel, Relaxed).is_err() {
            return;
        }
        for (i, chunk) in buf[..len].chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(rank, RECORD_WORD + i)
                .store(u64::from_le_bytes(w), Relaxed);
        }
        self.word(rank, 5).store(len as u64, Relaxed);
        self.word(rank, 6).store(writer, Relaxed);
        seq.fetch_add(1, Release);
    }

    /// Clear the record of `rank` if `writer` wrote it.
    pub fn clear(&self, rank: usize, writer: u64) {
        let seq = self.word(rank, 4);
        let s = seq.load(Acquire);
        if s % 2 == 1 || self.word(rank, 6).load(Relaxed) != writer {
            return;
        }
        if seq.compare_exchange(s, s + 1, AcqRel, Relaxed).is_err() {
            return;
        }
        self.word(rank, 5).store(0, Relaxed);
        self.word(rank, 6).store(0, Relaxed);
        seq.fetch_add(1, Release);
    }

    /// What `rank` last recorded being blocked in (`None`: not blocked in a call of ours, or
    /// the record could not be read).
    pub fn blocked(&self, rank: usize) -> Option<Blocked> {
        let seq = self.word(rank, 4);
        for _ in 0..100 {
            let s = seq.load(Acquire);
            if s % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let len = (self.word(rank, 5).load(Relaxed) as usize).min(RECORD_BYTES);
            let mut buf = [0u8; RECORD_BYTES];
            for i in 0..len.div_ceil(8) {
                let w = self.word(rank, RECORD_WORD + i).load(Relaxed).to_le_bytes();
                let end = (i * 8 + 8).min(len);
                buf[i * 8..end].copy_from_slice(&w[..end - i * 8]);
            }
            std::sync::atomic::fence(Acquire);
            if seq.load(Relaxed) != s {
                continue;
            }
            if len == 0 {
                return None;
            }
            return postcard::from_bytes(&buf[..len]).ok();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("ranks-board-test-{}-{name}", std::process::id()))
    }

    fn rec(op: &str, peer: u32) -> Blocked {
        Blocked {
            op: op.into(),
            comm: 0,
            peer: Some(peer),
            tag: Some(5),
            bytes: 8,
            since_ms: 1,
            within: Some(Within {
                op: "all_reduce".into(),
                comm: 0,
                seq: 3,
                root: None,
            }),
        }
    }

    #[test]
    fn ends_and_records_round_trip() {
        let p = path("rt");
        let b = Board::create(&p, 4).unwrap();
        let other = Board::open(&p, 4).unwrap();
        assert!(Board::open(&p, 5).is_err());
        assert_eq!(other.generation(), 0);
        assert!(other.ended(2).is_none());
        b.set_ended(2, Ending::Signal(9));
        b.set_ended(2, Ending::Code(0)); // the first record stands
        let (how, ago) = other.ended(2).unwrap();
        assert_eq!(how, Ending::Signal(9));
        assert!(how.failed());
        assert!(ago < Duration::from_secs(5));
        assert_eq!(other.generation(), 1);
        b.set_ended(1, Ending::Code(0));
        assert!(!other.ended(1).unwrap().0.failed());
        assert_eq!(
            (other.end_order(2), other.end_order(1), other.end_order(0)),
            (1, 2, 0)
        );

        assert_eq!(other.blocked(0), None);
        b.publish(0, 7, &rec("recv", 1));
        assert_eq!(other.blocked(0), Some(rec("recv", 1)));
        b.clear(0, 8); // not the writer: stays
        assert_eq!(other.blocked(0), Some(rec("recv", 1)));
        b.clear(0, 7);
        assert_eq!(other.blocked(0), None);
        // A record too long to fit is dropped, not cut.
        b.publish(3, 1, &rec(&"x".repeat(500), 0));
        assert_eq!(other.blocked(3), None);
        drop(other);
        drop(b);
        assert!(!p.exists());
    }

    #[test]
    fn readers_never_see_a_torn_record() {
        let p = path("torn");
        let b = std::sync::Arc::new(Board::create(&p, 1).unwrap());
        let w = b.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let writer = std::thread::spawn(move || {
            let mut i = 0u32;
            while !s2.load(Relaxed) {
                w.publish(
                    0,
                    1,
                    &rec(if i.is_multiple_of(2) { "recv" } else { "send" }, i),
                );
                i = i.wrapping_add(1);
            }
        });
        for _ in 0..20_000 {
            if let Some(r) = b.blocked(0) {
                let peer = r.peer.unwrap();
                assert_eq!(
                    r.op,
                    if peer.is_multiple_of(2) {
                        "recv"
                    } else {
                        "send"
                    }
                );
            }
        }
        stop.store(true, Relaxed);
        writer.join().unwrap();
    }
}
