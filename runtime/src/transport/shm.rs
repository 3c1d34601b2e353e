//! Shared-memory transport: one segment per job, mapped by the launcher and every rank.
//!
//! Layout of the segment (a file in /dev/shm named after the job):
//!
//! ```text
//! 0     header: magic, version, rank count, ring capacity, launcher pid
//! 4096  one 128-byte block per rank: pid, state, sleeper kind | doorbell sequence,
//!       sleeper count
//! ...   one sync block per rank, which its rank alone writes: two words per communicator
//!       slot (`SYNC_SLOTS`), through which the communicators of one host meet in a
//!       barrier without messages, and two data buffers of `SYNC_DATA` bytes for each of
//!       the first `DATA_SLOTS` slots, for the operands of small all-reductions
//!       (`crate::host_sync`)
//! ...   one ring per ordered pair (src, dst): head line (the writer's own), tail line,
//!       offer line, `cap` data bytes (chunks: a header word on a line boundary, bytes)
//! ```
//!
//! A ring is a single-producer single-consumer byte stream: `src` alone writes and advances
//! `head`, `dst` alone reads and advances `tail`. The bytes go in chunks, each behind a
//! header word at a cache-line boundary that the writer stores last (`Segment::ring_write`):
//! the reader polls the word where the next chunk goes, never `head`, so a small message
//! crosses from core to core as one cache line. Waiting ranks sleep on their doorbell futex;
//! a writer (or a reader that made room) rings the doorbell only when someone sleeps there.
//! That is a store-then-load on each side (the writer's bytes, then the sleeper count; the
//! count, then the bytes), which needs a full barrier on both. A rank that spins before it
//! sleeps (ranks do not outnumber cores) pays for both: it calls `membarrier` before it
//! looks a last time, which puts a barrier on every core running a process registered for
//! such barriers (the ranks among them), and says so in its block (its sleeper kind), and
//! then writers that registered ring its doorbell with no fence of their own
//! (`Segment::ring_doorbell`). Writing is then no slower than a store; sleeping costs about
//! a microsecond more here (the call is serialised machine-wide on recent kernels, so it
//! may cost more on a busy one), which a rank that spun first does not notice. Ranks that sleep at once (more ranks than
//! cores) keep the fence on the writer's side.
//! The launcher writes each rank's state when it exits and rings every doorbell, so a rank
//! waiting on a dead peer wakes up and reports it.
//!
//! The offer line of ring (src, dst) holds one word, `token << 3 | state`, through which
//! `dst`, pulling a large message of `src`'s, offers `src` to write a part of it into `dst`'s
//! memory itself: `dst` opens it (0 to OPEN), `src` takes it (OPEN to TAKEN) and, once the
//! bytes are written, marks it WRITTEN or FAILED; `dst` withdraws it (OPEN to 0) when its own
//! part is done, or waits for the mark and clears it. Each step is one compare-and-swap, so
//! exactly one side copies each byte, and `src` never writes into a buffer `dst` took back.
//!
//! This is one of the two modules allowed `unsafe` (the mapping and the rings).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    compiler_fence, fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::*,
};
use std::sync::Arc;
use std::time::Duration;

use memmap2::MmapRaw;

use super::{TakeFrame, Templated, Transport};
use crate::error::{Error, Result};
use crate::wire::{DataTemplate, HEADER_LEN};

const MAGIC: u64 = 0x524b_5348_4d30_0004; // "RKSHM0" + layout version
const HEADER_SIZE: usize = 4096;
const BLOCK: usize = 128;
/// Communicator slots of the sync blocks; two words per slot (see [`Segment::sync_word`]).
pub(crate) const SYNC_SLOTS: usize = 64;
const SYNC_WORDS: usize = 2 * SYNC_SLOTS;
/// Slots with data buffers, two each (see [`Segment::write_sync_data`]).
pub(crate) const DATA_SLOTS: usize = 16;
const SYNC_BUFS: usize = 2 * DATA_SLOTS;
/// Bytes of each sync data buffer (behind a header word, in the same cache line as the
/// first bytes: a small operand is one line to read).
pub(crate) const SYNC_DATA: usize = 256;
const SYNC_BUF: usize = (8 + SYNC_DATA).next_multiple_of(LINE);
const SYNC_BLOCK: usize = SYNC_WORDS * 8 + SYNC_BUFS * SYNC_BUF;
const LINE: usize = 64;
/// Ring header: head on one cache line, tail on the next, the offer word on a third.
const RING_HEADER: usize = 3 * LINE;
/// States of an offer word (the low three bits; the token above them).
const OFFER_OPEN: u64 = 1;
const OFFER_TAKEN: u64 = 2;
const OFFER_WRITTEN: u64 = 3;
const OFFER_FAILED: u64 = 4;

fn offer_word(token: u64, state: u64) -> u64 {
    token << 3 | state
}

/// A rank's state as recorded in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RankState {
    /// Spawned, not yet attached.
    Starting = 0,
    /// Attached to the segment.
    Running = 1,
    /// Exited with status 0.
    Exited = 2,
    /// Exited abnormally or was killed.
    Failed = 3,
}

/// Ring capacity in bytes for a job of `n` ranks: big rings for few ranks, a bounded total.
pub fn ring_capacity(n: usize) -> usize {
    let total: usize = 64 << 20;
    let per = total / (n * n).max(1);
    let cap = if per.is_power_of_two() {
        per
    } else {
        per.next_power_of_two() / 2
    };
    cap.clamp(64 << 10, MAX_RING)
}

/// The largest ring (a reader's [`Cursor`] counts the bytes of a chunk in 20 bits).
const MAX_RING: usize = 1 << 20;

fn layout(n: usize, cap: usize) -> (usize, usize) {
    let rings_off = (sync_off(n) + n * SYNC_BLOCK).next_multiple_of(4096);
    (rings_off, rings_off + n * n * (RING_HEADER + cap))
}

fn sync_off(n: usize) -> usize {
    (HEADER_SIZE + n * BLOCK).next_multiple_of(LINE)
}

/// A mapped job segment.
pub struct Segment {
    map: MmapRaw,
    path: PathBuf,
    owner: bool,
    n: usize,
    cap: usize,
    rings_off: usize,
    /// This process registered for `membarrier`'s global barriers: it rings the doorbell
    /// of a rank whose sleepers call one without a fence of its own.
    barriers: bool,
}

// SAFETY: the mapping is only accessed through atomics (headers, blocks) and through the ring
// protocol, where each byte range has one writer at a time; the raw pointer it holds stays
// valid for the life of the value.
unsafe impl Send for Segment {}
// SAFETY: as above; shared access from several threads goes through the same atomics.
unsafe impl Sync for Segment {}

impl Segment {
    /// Create a new segment at `path` for `n` ranks (the launcher does this).
    pub fn create(path: &Path, n: usize) -> Result<Segment> {
        if n == 0 || n > 4096 {
            return Err(Error::InvalidArgument(format!(
                "a shared-memory job needs 1..=4096 ranks, not {n}"
            )));
        }
        let cap = ring_capacity(n);
        let (rings_off, size) = layout(n, cap);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let seg = (|| {
            file.set_len(size as u64)
                .map_err(|e| Error::io(format!("sizing {} to {size} bytes", path.display()), e))?;
            let map = MmapRaw::map_raw(&file)
                .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
            Ok(Segment {
                map,
                path: path.to_owned(),
                owner: true,
                n,
                cap,
                rings_off,
                barriers: false,
            })
        })();
        let seg: Segment = match seg {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        // The file is zero-filled: every state is Starting, every ring empty.
        seg.u64_at(8).store(n as u64, Relaxed);
        seg.u64_at(16).store(cap as u64, Relaxed);
        seg.u64_at(24).store(u64::from(std::process::id()), Relaxed);
        seg.u64_at(0).store(MAGIC, Release);
        Ok(seg)
    }

    /// Attach to an existing segment made for `n` ranks.
    pub fn open(path: &Path, n: usize) -> Result<Segment> {
        let file = File::options()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening job segment {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?
            .len() as usize;
        let bad =
            |what: String| Error::Bootstrap(format!("job segment {}: {what}", path.display()));
        if len < HEADER_SIZE {
            return Err(bad(format!("only {len} bytes")));
        }
        let map = MmapRaw::map_raw(&file)
            .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        let mut seg = Segment {
            map,
            path: path.to_owned(),
            owner: false,
            n,
            cap: 0,
            rings_off: 0,
            barriers: false,
        };
        if seg.u64_at(0).load(Acquire) != MAGIC {
            return Err(bad("not a ranks segment of this version".into()));
        }
        let seg_n = seg.u64_at(8).load(Relaxed) as usize;
        if seg_n != n {
            return Err(bad(format!("made for {seg_n} ranks, this job has {n}")));
        }
        let cap = seg.u64_at(16).load(Relaxed) as usize;
        if !cap.is_power_of_two() || !(4 * LINE..=MAX_RING).contains(&cap) {
            return Err(bad(format!(
                "ring capacity {cap} is not a power of two up to {MAX_RING}"
            )));
        }
        let (rings_off, size) = layout(n, cap);
        if size != len {
            return Err(bad(format!("{len} bytes, expected {size}")));
        }
        seg.cap = cap;
        seg.rings_off = rings_off;
        Ok(seg)
    }

    /// Number of ranks the segment was made for.
    pub fn ranks(&self) -> usize {
        self.n
    }

    /// Path of the backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.map.len() && off.is_multiple_of(8));
        // SAFETY: in bounds and 8-aligned (the mapping is page aligned); the memory is shared
        // and only ever accessed atomically at this offset.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.map.len() && off.is_multiple_of(4));
        // SAFETY: in bounds and 4-aligned; only ever accessed atomically at this offset.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU32) }
    }

    fn block(&self, rank: usize) -> usize {
        assert!(rank < self.n);
        HEADER_SIZE + rank * BLOCK
    }
    fn pid_word(&self, rank: usize) -> &AtomicU32 {
        self.u32_at(self.block(rank))
    }
    fn state_word(&self, rank: usize) -> &AtomicU32 {
        self.u32_at(self.block(rank) + 4)
    }
    /// 1 when the rank's sleepers call `membarrier` before their last look (see the
    /// module's documentation), else 0. Set once, as the rank attaches.
    fn sleeper_kind_word(&self, rank: usize) -> &AtomicU32 {
        self.u32_at(self.block(rank) + 8)
    }
    fn seq_word(&self, rank: usize) -> &AtomicU32 {
        self.u32_at(self.block(rank) + LINE)
    }
    fn sleepers_word(&self, rank: usize) -> &AtomicU32 {
        self.u32_at(self.block(rank) + LINE + 4)
    }

    /// Sync word `index` of `rank` (`crate::host_sync` says which are whose): written by
    /// that rank alone, read by the others of its communicator in that slot
    /// (`crate::host_sync`); zero at first.
    pub(crate) fn sync_word(&self, rank: usize, index: usize) -> &AtomicU64 {
        assert!(rank < self.n && index < SYNC_WORDS);
        self.u64_at(sync_off(self.n) + rank * SYNC_BLOCK + index * 8)
    }

    /// Offset of `rank`'s sync data buffer `buf` (its header word; the bytes right after it).
    fn sync_data_off(&self, rank: usize, buf: usize, len: usize) -> usize {
        assert!(rank < self.n && buf < SYNC_BUFS && len <= SYNC_DATA);
        sync_off(self.n) + rank * SYNC_BLOCK + SYNC_WORDS * 8 + buf * SYNC_BUF
    }

    /// Put `src` in `rank`'s sync data buffer `buf` (`2 * slot` and `2 * slot + 1` are slot
    /// `slot`'s). Only `rank` writes its buffers, and only while nobody reads them:
    /// `crate::host_sync` keeps the two apart with the sync words (a reader reads a buffer
    /// after the writer's stamp, and the writer writes it again only after every reader
    /// has said it read it).
    pub(crate) fn write_sync_data(&self, rank: usize, buf: usize, header: u64, src: &[u8]) {
        let at = self.sync_data_off(rank, buf, src.len());
        self.u64_at(at).store(header, Relaxed);
        let off = at + 8;
        // SAFETY: `off .. off + src.len()` is inside the mapping (the sync blocks precede
        // the rings); nobody reads this range meanwhile (see above), so the copy races with
        // nothing, and `src` is our own memory, apart from the mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.map.as_mut_ptr().add(off), src.len())
        }
    }

    /// Copy the start of `rank`'s sync data buffer `buf` into `dst`; its header word (see
    /// [`Segment::write_sync_data`]).
    pub(crate) fn read_sync_data(&self, rank: usize, buf: usize, dst: &mut [u8]) -> u64 {
        let at = self.sync_data_off(rank, buf, dst.len());
        let header = self.u64_at(at).load(Relaxed);
        let off = at + 8;
        // SAFETY: in the mapping, as above; its writer does not write it meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_mut_ptr().add(off),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
        header
    }

    /// The pid a rank registered when it attached (0 before).
    pub fn pid(&self, rank: usize) -> u32 {
        self.pid_word(rank).load(Acquire)
    }

    /// A rank's recorded state.
    pub fn state(&self, rank: usize) -> RankState {
        match self.state_word(rank).load(Acquire) {
            0 => RankState::Starting,
            1 => RankState::Running,
            2 => RankState::Exited,
            _ => RankState::Failed,
        }
    }

    /// Record a rank's state and wake everyone, so waiters on it notice.
    pub fn set_state(&self, rank: usize, state: RankState) {
        self.state_word(rank).store(state as u32, SeqCst);
        self.wake_all();
    }

    /// Wake every rank's sleepers (something they may wait on changed).
    pub fn wake_all(&self) {
        for r in 0..self.n {
            self.ring_doorbell(r, true);
        }
    }

    /// Register the calling process as `rank`.
    pub fn attach(&self, rank: usize) {
        self.pid_word(rank).store(std::process::id(), Release);
        self.sleeper_kind_word(rank)
            .store(u32::from(self.barriers), Release);
        self.state_word(rank)
            .store(RankState::Running as u32, SeqCst);
    }

    /// Wake `rank`'s sleepers if any (`always`: ring anyway), after our stores that they may
    /// wait for. Against the sleeper's side in `Shm::wait` (count, then look): one side
    /// needs a full barrier between its store and its load, the other the same, or a
    /// `membarrier` from the sleeper that covers us (see the module's documentation).
    fn ring_doorbell(&self, rank: usize, always: bool) {
        let (kind, seq, sleepers) = self.doorbell_words(rank);
        if !(self.barriers && kind.load(Relaxed) == 1) {
            fence(SeqCst);
        } else {
            // No fence: the sleeper's barrier stands for it, which needs the stores before
            // the load below in the machine code too (the compiler may not hoist it).
            compiler_fence(SeqCst);
        }
        if always || sleepers.load(SeqCst) > 0 {
            seq.fetch_add(1, SeqCst);
            futex_wake(seq);
        }
    }

    /// `rank`'s sleeper kind, doorbell and sleeper count words (as `sleeper_kind_word`,
    /// `seq_word` and `sleepers_word`), with one bounds check: a doorbell is on every
    /// message's path.
    #[inline]
    fn doorbell_words(&self, rank: usize) -> (&AtomicU32, &AtomicU32, &AtomicU32) {
        let b = self.block(rank);
        assert!(b + LINE + 8 <= self.map.len());
        // SAFETY: `b + 8`, `b + LINE` and `b + LINE + 4` are in bounds (above) and 4-aligned
        // (blocks start on lines of the page-aligned mapping); these words are only ever
        // accessed atomically, as `u32_at` hands them out.
        unsafe {
            let at = |off: usize| &*(self.map.as_mut_ptr().add(b + off) as *const AtomicU32);
            (at(8), at(LINE), at(LINE + 4))
        }
    }

    /// Ring (src, dst): its head word, its tail word and its data area. (On every message's
    /// path: one check of the ranks, no more.)
    #[inline]
    fn ring(&self, src: usize, dst: usize) -> (&AtomicU64, &AtomicU64, *mut u8) {
        assert!(src < self.n && dst < self.n);
        let off = self.rings_off + (src * self.n + dst) * (RING_HEADER + self.cap);
        debug_assert!(off + RING_HEADER + self.cap <= self.map.len());
        // SAFETY: a segment is only used once its mapping was checked to be `layout(n, cap)`
        // long (`create` sizes it so, `attach` refuses any other length), which holds all
        // n * n rings at `rings_off`: with src, dst < n, `off .. off + RING_HEADER + cap` is
        // inside it. The head and tail words are the first words of the header's first two
        // lines (8-aligned, as the mapping is page aligned), only ever accessed atomically.
        unsafe {
            let base = self.map.as_mut_ptr().add(off);
            (
                &*(base as *const AtomicU64),
                &*(base.add(LINE) as *const AtomicU64),
                base.add(RING_HEADER),
            )
        }
    }

    /// The offer word of ring (src, dst) (see the module's documentation).
    fn offer(&self, src: usize, dst: usize) -> &AtomicU64 {
        assert!(src < self.n && dst < self.n);
        let off = self.rings_off + (src * self.n + dst) * (RING_HEADER + self.cap);
        self.u64_at(off + 2 * LINE)
    }

    /// The chunk header word at ring position `pos` (a multiple of [`LINE`]).
    fn chunk_word(&self, data: *mut u8, pos: u64) -> &AtomicU64 {
        debug_assert!(pos.is_multiple_of(LINE as u64));
        let off = (pos as usize) & (self.cap - 1) & !(LINE - 1);
        // SAFETY: `off + 8 <= cap` (cap is a multiple of LINE) and 8-aligned (the data area
        // starts on a cache line); the word is only accessed atomically while it is a chunk
        // header, and a writer reuses it only after the reader freed it (see `ring_write`).
        unsafe { &*(data.add(off) as *const AtomicU64) }
    }

    /// Payload bytes of the ready chunk whose header is at `pos`: `Ok(None)` when the writer
    /// has not published one there yet, an error when the word is no chunk header of that
    /// position (a corrupt ring).
    fn chunk_at(&self, src: usize, data: *mut u8, pos: u64) -> Result<Option<u64>> {
        let w = self.chunk_word(data, pos).load(Acquire);
        if w == 0 {
            return Ok(None);
        }
        let len = w & 0xffff_ffff;
        if w >> 32 != chunk_stamp(pos)
            || len == 0
            || chunk_span(len) + CHUNK_HEADER > self.cap as u64
        {
            return Err(Error::Malformed {
                rank: src,
                detail: format!(
                    "shared-memory ring holds {w:#x} where a chunk of position {pos} belongs"
                ),
            });
        }
        Ok(Some(len))
    }

    /// Copy `out.len()` bytes from ring position `pos` on (wrapping at the end).
    fn copy_out(&self, data: *mut u8, pos: u64, out: &mut [u8]) {
        let off = (pos as usize) & (self.cap - 1);
        let first = out.len().min(self.cap - off);
        // SAFETY: `off + first <= cap` and `out.len() - first <= cap`: both source ranges
        // are inside the data area. Callers copy only payload bytes of chunks they acquired
        // the header of, which the writer does not touch until the reader frees them.
        unsafe {
            std::ptr::copy_nonoverlapping(data.add(off), out.as_mut_ptr(), first);
            if first < out.len() {
                std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
            }
        }
    }

    /// Append up to all of `bufs` (in order) to ring (src, dst) as one chunk. Only `src` may
    /// call this. Returns the number of bytes taken: all of them, or (for a write of at least
    /// [`MIN_CHUNK`] bytes) as many as fit if that is at least [`MIN_CHUNK`], or none.
    ///
    /// A chunk is a header word at a cache-line boundary, `stamp << 32 | length`, then the
    /// bytes, then padding to the next line, where the next chunk's header goes. The writer
    /// clears that next header word first, copies the bytes, and publishes the chunk with a
    /// Release store of its header: the reader polls the word at its position, in the line
    /// that brings the bytes of a small message with it, and never the writer's `head`
    /// (which only the writer uses). A cleared word always waits where the reader will look
    /// next, so stale bytes of an earlier lap are never taken for a header; the stamp (the
    /// position's line number) catches corruption.
    ///
    /// `tail_seen` caches the reader's position: the shared tail (a cache line the reader
    /// writes) is only read again when the cached value shows too little room.
    fn ring_write(&self, src: usize, dst: usize, bufs: &[&[u8]], tail_seen: &AtomicU64) -> usize {
        let (head, tail, data) = self.ring(src, dst);
        let h = head.load(Relaxed);
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return 0;
        }
        let room = |t: u64| self.room(h, t);
        let enough = |r: usize| r >= want || (want >= MIN_CHUNK && r >= MIN_CHUNK);
        let mut r = room(tail_seen.load(Relaxed));
        if r < want {
            // Look at the reader's position before cutting the write short.
            let t = tail.load(Acquire);
            tail_seen.store(t, Relaxed);
            r = room(t);
            if !enough(r) {
                return 0;
            }
        }
        let n = want.min(r);
        let next = h + chunk_span(n as u64);
        self.chunk_word(data, next).store(0, Relaxed);
        let mut pos = h + CHUNK_HEADER;
        let start = (pos as usize) & (self.cap - 1);
        if n == want && start + n <= self.cap {
            // All of it, in one piece before the ring's end (a small frame, most often).
            let mut at = start;
            for buf in bufs {
                // SAFETY: `at + buf.len() <= start + n <= cap`: inside the data area; the
                // bytes from `h` to `next` are free (the reader is past them by `room`) and
                // unread until the header below is published.
                unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), data.add(at), buf.len()) };
                at += buf.len();
            }
        } else {
            let mut left = n;
            for buf in bufs {
                let k = buf.len().min(left);
                if k == 0 {
                    continue;
                }
                let off = (pos as usize) & (self.cap - 1);
                let first = k.min(self.cap - off);
                // SAFETY: `off + first <= cap` and `k - first <= cap`, so both copies stay
                // inside the ring's data area; the bytes from `h` to `next` are free (the
                // reader is past them by `room`) and unread until the header below is
                // published.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), data.add(off), first);
                    if first < k {
                        std::ptr::copy_nonoverlapping(buf.as_ptr().add(first), data, k - first);
                    }
                }
                pos += k as u64;
                left -= k;
            }
        }
        self.chunk_word(data, h)
            .store(chunk_stamp(h) << 32 | n as u64, Release);
        head.store(next, Relaxed);
        n
    }

    /// Payload bytes a chunk written at `at` may hold before the reader's position `t` a
    /// lap on, leaving the word after it (cleared for the next chunk's header).
    #[inline]
    fn room(&self, at: u64, t: u64) -> usize {
        let free = (t + self.cap as u64).saturating_sub(at + CHUNK_HEADER);
        (free & !(LINE as u64 - 1)).saturating_sub(CHUNK_HEADER) as usize
    }

    /// [`Segment::ring_write`] of a whole small frame, header `h` and `payload`, in one
    /// chunk before the ring's end: the header's words are stored whole where they go and
    /// a payload of up to [`SMALL_PAYLOAD`] bytes is copied a word at a time, with no
    /// encoded copy of the header, no `memcpy` and no loop over pieces (about a third of a
    /// small send's instructions went there). `None`, having written nothing, when the
    /// frame is larger, or does not fit so as the reader's position was last seen:
    /// `ring_write` then takes it (looking at the reader's position again, or cutting it).
    #[inline]
    fn ring_write_frame(
        &self,
        src: usize,
        dst: usize,
        h: &crate::wire::Header,
        payload: &[u8],
        tail_seen: &AtomicU64,
    ) -> Option<usize> {
        if payload.len() > SMALL_PAYLOAD {
            return None;
        }
        let (head, _, data) = self.ring(src, dst);
        let at = head.load(Relaxed);
        let want = HEADER_LEN + payload.len();
        let start = ((at + CHUNK_HEADER) as usize) & (self.cap - 1);
        if self.room(at, tail_seen.load(Relaxed)) < want || start + want > self.cap {
            return None;
        }
        let next = at + chunk_span(want as u64);
        self.chunk_word(data, next).store(0, Relaxed);
        // SAFETY: `start + want <= cap`: the frame is inside the data area, in one piece;
        // the bytes from `at` to `next` are free (the room above) and unread until the
        // header below is published.
        // `start` is 8 past a line, so the words are aligned; `payload` is the caller's,
        // apart from the ring.
        unsafe {
            let words = data.add(start) as *mut u64;
            for (i, w) in h.words().into_iter().enumerate() {
                words.add(i).write(w.to_le());
            }
            copy_words(
                payload.as_ptr(),
                data.add(start + HEADER_LEN),
                payload.len(),
            );
        }
        self.chunk_word(data, at)
            .store(chunk_stamp(at) << 32 | want as u64, Release);
        head.store(next, Relaxed);
        Some(want)
    }

    /// Take up to `buf.len()` bytes from ring (src, dst). Only `dst` may call this, one
    /// thread at a time; `cursor` is its [`Cursor`] of the ring (the reader's position, the
    /// shared `tail`, may be inside a chunk).
    /// `took` is set when bytes were taken: then `read_done` looks whether the writer sleeps
    /// waiting for room (it writes partial chunks, so it waits only when the ring is full).
    fn ring_read(
        &self,
        src: usize,
        dst: usize,
        buf: &mut [u8],
        took: &AtomicBool,
        cursor: &AtomicU64,
    ) -> Result<usize> {
        let (_, tail, data) = self.ring(src, dst);
        let c = Cursor(cursor.load(Relaxed));
        let (mut t, mut l) = (tail.load(Relaxed), c.left());
        // A ring holds at most a lap: no read looks for chunks further (as `ring_scan`).
        let end = c.next() + self.cap as u64;
        let mut n = 0;
        while n < buf.len() {
            if l == 0 {
                if t >= end {
                    break;
                }
                match self.chunk_at(src, data, t) {
                    Ok(Some(len)) => (t, l) = (t + CHUNK_HEADER, len),
                    Ok(None) => break,
                    // The good bytes before a corrupt header are delivered first; the next
                    // read reports it.
                    Err(_) if n > 0 => break,
                    Err(e) => return Err(e),
                }
            }
            let k = (l as usize).min(buf.len() - n);
            self.copy_out(data, t, &mut buf[n..n + k]);
            n += k;
            t += k as u64;
            l -= k as u64;
            if l == 0 {
                t = t.next_multiple_of(LINE as u64);
            }
        }
        if n == 0 {
            return Ok(0);
        }
        // Any read may be what a writer waiting for room needs: the writer may have seen the
        // ring full before our earlier reads freed room, so "the ring was more than half
        // full" is no safe test. The loom model (`ring_model.rs`) found that such a shortcut
        // loses the wakeup.
        took.store(true, Relaxed);
        cursor.store(Cursor::at(t, l).0, Relaxed);
        tail.store(t, Release);
        Ok(n)
    }

    /// Take a frame of `head + n` bytes that is next in ring (src, dst), at the start of a
    /// chunk that holds all of it in one piece of the data area: `pick` sees its first
    /// `head` bytes and says how many more (`n`, at most `out.len()`) go to `out`, or leaves
    /// it. Anything else (the reader inside a chunk, a frame across chunks or round the
    /// ring's end, a corrupt header) is [`TakeFrame::Slow`]: the general reads handle it.
    /// Only `dst` may call this, as the one thread reading; a frame taken rings the writer's
    /// doorbell, as `read_done` does.
    fn ring_take(
        &self,
        src: usize,
        dst: usize,
        head: usize,
        out: &mut [u8],
        pick: &mut dyn FnMut(&[u8]) -> Option<usize>,
        cursor: &AtomicU64,
    ) -> TakeFrame {
        let (pos, bytes, tail) = match self.whole_chunk(src, dst, head, cursor) {
            Ok(chunk) => chunk,
            Err(true) => return TakeFrame::Empty,
            Err(false) => return TakeFrame::Slow,
        };
        let Some(n) = pick(&bytes[..head]) else {
            return TakeFrame::Left;
        };
        let used = head + n;
        if n > out.len() || used > bytes.len() {
            return TakeFrame::Slow;
        }
        out[..n].copy_from_slice(&bytes[head..used]);
        self.took_from_chunk(src, cursor, tail, pos, bytes.len(), used);
        TakeFrame::Took(n)
    }

    /// [`Segment::ring_take`] for the frame whose header has `tmpl`'s fixed words, compared
    /// where they lie in the ring (no callback, no decoding): its payload, up to
    /// `out.len()` bytes, goes to the front of `out`; the payload length is returned.
    fn ring_take_templated(
        &self,
        src: usize,
        dst: usize,
        tmpl: &DataTemplate,
        out: &mut [u8],
        cursor: &AtomicU64,
    ) -> Templated {
        let (pos, bytes, tail) = match self.whole_chunk(src, dst, HEADER_LEN, cursor) {
            Ok(chunk) => chunk,
            Err(true) => return Templated::Empty,
            Err(false) => return Templated::Slow,
        };
        let n = match templated(bytes, tmpl, out.len()) {
            Ok(n) => n,
            Err(other) => return other,
        };
        let used = HEADER_LEN + n;
        out[..n].copy_from_slice(&bytes[HEADER_LEN..used]);
        self.took_from_chunk(src, cursor, tail, pos, bytes.len(), used);
        Templated::Took(n as u64)
    }

    /// Take the frames with `tmpl`'s header that are next in ring (src, dst), one after
    /// another, each at the start of a chunk that holds it in one piece, while `each` takes
    /// the frame's payload (copies it where it goes and says true; false leaves the frame
    /// and ends the run). The run frees what it took and rings the writer's doorbell once,
    /// at its end (a window of small messages: taken one at a time, each paid for both,
    /// and for finding the ring's words again). How many frames were taken. A run ends
    /// inside a chunk that holds more frames, at anything `ring_take_templated` would not
    /// take, and after a lap. Only `dst` may call this, as the one thread reading.
    fn ring_take_run(
        &self,
        src: usize,
        dst: usize,
        tmpl: &DataTemplate,
        cursor: &AtomicU64,
        each: &mut dyn FnMut(&[u8]) -> bool,
    ) -> usize {
        let c = Cursor(cursor.load(Relaxed));
        if c.left() > 0 {
            return 0;
        }
        let (_, tail, data) = self.ring(src, dst);
        let start = c.next();
        // The chunk of the last frame taken: its position, length and the bytes taken.
        let (mut pos, mut last, mut n) = (start, None, 0);
        while pos < start + self.cap as u64 {
            let Ok(bytes) = self.chunk_bytes(src, data, pos, HEADER_LEN) else {
                break;
            };
            let Ok(m) = templated(bytes, tmpl, usize::MAX) else {
                break;
            };
            let used = HEADER_LEN + m;
            if !each(&bytes[HEADER_LEN..used]) {
                break;
            }
            n += 1;
            last = Some((pos, bytes.len(), used));
            if used < bytes.len() {
                // More frames in this chunk: the reader stops inside it.
                break;
            }
            pos += chunk_span(bytes.len() as u64);
        }
        if let Some((at, len, used)) = last {
            self.took_from_chunk(src, cursor, tail, at, len, used);
        }
        n
    }

    /// The ready chunk at the reader's position of ring (src, dst), when a frame of at least
    /// `head` bytes may be taken from it in one step: its position, its bytes and the ring's
    /// `tail`. `Err(true)`: nothing is there; `Err(false)`: not in one step (the reader is
    /// inside a chunk, the chunk is shorter or round the ring's end, or its header is
    /// corrupt), which the general reads handle. Only `dst` may call this, as the one thread
    /// reading.
    #[inline(always)]
    fn whole_chunk(
        &self,
        src: usize,
        dst: usize,
        head: usize,
        cursor: &AtomicU64,
    ) -> std::result::Result<(u64, &[u8], &AtomicU64), bool> {
        let c = Cursor(cursor.load(Relaxed));
        if c.left() > 0 {
            return Err(false);
        }
        let (_, tail, data) = self.ring(src, dst);
        let pos = c.next();
        let bytes = self.chunk_bytes(src, data, pos, head)?;
        Ok((pos, bytes, tail))
    }

    /// [`Segment::whole_chunk`] for the chunk whose header is at `pos` in ring (src, _),
    /// whose data area is `data`.
    #[inline(always)]
    fn chunk_bytes(
        &self,
        src: usize,
        data: *mut u8,
        pos: u64,
        head: usize,
    ) -> std::result::Result<&[u8], bool> {
        let len = match self.chunk_at(src, data, pos) {
            Ok(Some(len)) => len as usize,
            Ok(None) => return Err(true),
            Err(_) => return Err(false),
        };
        let body = ((pos as usize) & (self.cap - 1)) + CHUNK_HEADER as usize;
        if len < head || body + len > self.cap {
            return Err(false);
        }
        // SAFETY: `body + len <= cap`: the chunk's payload is inside the data area, in one
        // piece. The writer published it (the Acquire load of its header in `chunk_at`) and
        // does not touch it again until we free it (the `tail` store in
        // `took_from_chunk`), so nothing writes these bytes while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(data.add(body), len) })
    }

    /// The first `used` bytes of the `len`-byte chunk at `pos` of ring (src, _) were taken
    /// (the last chunk of a run, for `ring_take_run`): move the reader on (past the chunk,
    /// or inside it), free them and all before, and ring the writer's doorbell, as
    /// `read_done` does.
    #[inline(always)]
    fn took_from_chunk(
        &self,
        src: usize,
        cursor: &AtomicU64,
        tail: &AtomicU64,
        pos: u64,
        len: usize,
        used: usize,
    ) {
        let (t, l) = if used == len {
            (pos + chunk_span(len as u64), 0)
        } else {
            (pos + CHUNK_HEADER + used as u64, (len - used) as u64)
        };
        cursor.store(Cursor::at(t, l).0, Relaxed);
        tail.store(t, Release);
        self.ring_doorbell(src, false);
    }

    /// Walk the ready chunks of ring (src, dst) from the reader's position, copying into
    /// `out` (if any) without taking anything, until `want` bytes are counted. Returns the
    /// bytes counted (at least `want` when that many are ready), or `None` if the ring is
    /// corrupt right at the reader's position. Only the reader may call this. Threads of the reading process may count
    /// (without `out`) while another of them reads: they see the cursor as it was after
    /// some read, so they count from a true chunk boundary, if an old one, and get a stale
    /// count that only hints (the reading thread counts again before it relies on one).
    fn ring_scan(
        &self,
        src: usize,
        dst: usize,
        cursor: &AtomicU64,
        want: usize,
        mut out: Option<&mut [u8]>,
    ) -> Option<usize> {
        let (_, tail, data) = self.ring(src, dst);
        let c = Cursor(cursor.load(Relaxed));
        let (start, l) = (c.next(), c.left());
        let mut pos = start;
        let mut got = l;
        let want = want as u64;
        if let Some(o) = out.as_deref_mut() {
            let k = o.len().min(l as usize);
            self.copy_out(data, tail.load(Relaxed), &mut o[..k]);
        }
        while got < want && pos < start + self.cap as u64 {
            let len = match self.chunk_at(src, data, pos) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                // As a read does: the good bytes first, the corruption when it is in front.
                Err(_) if got > 0 => break,
                Err(_) => return None,
            };
            if let Some(o) = out.as_deref_mut() {
                let at = got as usize;
                if at < o.len() {
                    let k = (o.len() - at).min(len as usize);
                    self.copy_out(data, pos + CHUNK_HEADER, &mut o[at..at + k]);
                }
            }
            got += len;
            pos += chunk_span(len);
        }
        Some(got as usize)
    }

    /// Bytes in ring (src, dst) a read would return now, counted up to at least `want` if
    /// that many are there (`None` if the ring is corrupt: a read reports it).
    fn ring_available(
        &self,
        src: usize,
        dst: usize,
        cursor: &AtomicU64,
        want: usize,
    ) -> Option<usize> {
        self.ring_scan(src, dst, cursor, want, None)
    }

    /// Copy up to `buf.len()` bytes from the front of ring (src, dst) without taking them.
    /// Only `dst` may call this, as the one thread reading.
    fn ring_peek(&self, src: usize, dst: usize, buf: &mut [u8], cursor: &AtomicU64) -> usize {
        let want = buf.len();
        self.ring_scan(src, dst, cursor, want, Some(buf))
            .map_or(0, |n| n.min(want))
    }

    /// Whether a read of ring (src, dst) would take something now (or report a corrupt ring).
    fn ring_has_data(&self, src: usize, dst: usize, cursor: &AtomicU64) -> bool {
        self.ring_scan(src, dst, cursor, 1, None)
            .is_none_or(|n| n > 0)
    }
}

/// A reader's place in a ring, in one word so that other threads of its process read it
/// whole: the position of the next chunk header to look at (a line boundary) and the
/// payload bytes left before it in the chunk being read. (Rings are at most 1 MiB, so the
/// bytes left fit in 20 bits; the line number in the other 44 lasts for 2^50 bytes.)
#[derive(Clone, Copy)]
struct Cursor(u64);

impl Cursor {
    const LEFT_BITS: u32 = 20;

    /// The cursor of a reader at stream position `t` with `left` bytes of its chunk to go.
    fn at(t: u64, left: u64) -> Cursor {
        debug_assert!(left < 1 << Self::LEFT_BITS);
        let next = if left > 0 {
            (t + left).next_multiple_of(LINE as u64)
        } else {
            t
        };
        Cursor((next / LINE as u64) << Self::LEFT_BITS | left)
    }
    fn next(self) -> u64 {
        (self.0 >> Self::LEFT_BITS) * LINE as u64
    }
    fn left(self) -> u64 {
        self.0 & ((1 << Self::LEFT_BITS) - 1)
    }
}

/// Payloads up to this long go in one step with their header (`Segment::ring_write_frame`).
const SMALL_PAYLOAD: usize = 64;

/// Copy `len` bytes, at most [`SMALL_PAYLOAD`], from `src` to `dst`: eight at a time,
/// inline (a call to `memcpy` for a few bytes cost more than the copy).
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes,
/// the two ranges apart.
#[inline(always)]
unsafe fn copy_words(src: *const u8, dst: *mut u8, len: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    debug_assert!(len <= SMALL_PAYLOAD);
    // SAFETY (all of it): every access is of 8 bytes at an offset from 0 to `len - 8`, or
    // of one byte below `len`: inside both ranges.
    unsafe {
        if len < 8 {
            for i in 0..len {
                *dst.add(i) = *src.add(i);
            }
            return;
        }
        let mut i = 0;
        while i + 8 <= len {
            wr(dst.add(i) as *mut u64, rd(src.add(i) as *const u64));
            i += 8;
        }
        if i < len {
            // The last eight bytes, overlapping the word before.
            wr(
                dst.add(len - 8) as *mut u64,
                rd(src.add(len - 8) as *const u64),
            );
        }
    }
}

/// Bytes a chunk header takes before its payload.
const CHUNK_HEADER: u64 = 8;
/// The least payload a partial chunk carries: a write that does not fit waits for this much
/// room rather than cutting a message into many small chunks, so a frame of up to
/// [`Shm::holds`]'s bound always fits in the ring, whatever the pieces it was written in.
const MIN_CHUNK: usize = 2048;

/// Ring bytes a chunk with `len` payload bytes takes, up to the next line.
fn chunk_span(len: u64) -> u64 {
    (CHUNK_HEADER + len).next_multiple_of(LINE as u64)
}

/// The stamp in the header of the chunk at ring position `pos`.
fn chunk_stamp(pos: u64) -> u64 {
    (pos / LINE as u64) & 0xffff_ffff
}

/// The payload length of the frame at the front of chunk `bytes` (at least a header long)
/// when its header has `tmpl`'s fixed words, compared where they lie, and its payload fits
/// in `room` bytes and in the chunk. `Other`: another frame, or one longer than `room`
/// (the general path reports it); `Slow`: longer than its chunk (the general reads take
/// it, or find the ring corrupt).
#[inline(always)]
fn templated(
    bytes: &[u8],
    tmpl: &DataTemplate,
    room: usize,
) -> std::result::Result<usize, Templated> {
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    if [word(0), word(8), word(24), word(32)] != *tmpl.words() {
        return Err(Templated::Other);
    }
    let n = word(16);
    if n > room as u64 {
        return Err(Templated::Other);
    }
    if HEADER_LEN as u64 + n > bytes.len() as u64 {
        return Err(Templated::Slow);
    }
    Ok(n as usize)
}

/// For the fuzz target `shm_ring`: a reader of a ring whose data area holds `bytes` (what a
/// corrupt or hostile writer could leave there, repeated to fill it) and whose reader starts
/// at line `start_line`, reading in pieces of `piece` bytes (at least 1) through every call
/// a reader makes: `has_data`, `available`, `peek`, `read`, every other time a frame of
/// `piece` bytes taken in one step (`take_frame`), and every fourth time the frame whose
/// header the peek shows taken by its template (`take_templated`, when that header is a raw
/// data frame's; every eighth time a run of up to three such frames, `take_run`). It reads
/// until the ring reports corruption or has nothing more, checking that a peek shows what
/// the read then takes and that the reader never takes more than a lap. Panics only if one
/// of those checks fails. Returns the bytes read.
#[doc(hidden)]
pub fn fuzz_ring_reader(bytes: &[u8], start_line: u64, piece: usize) -> usize {
    let n = 2;
    let cap = 64 << 10;
    let (rings_off, size) = layout(n, cap);
    let map = memmap2::MmapMut::map_anon(size).expect("anonymous memory for the fuzz segment");
    let seg = Segment {
        map: MmapRaw::from(map),
        path: PathBuf::new(),
        owner: false,
        n,
        cap,
        rings_off,
        barriers: false,
    };
    let (_, tail, data) = seg.ring(0, 1);
    if !bytes.is_empty() {
        // SAFETY: the anonymous mapping is ours alone; the data area is `cap` bytes long and
        // nothing else refers to it yet.
        let area = unsafe { std::slice::from_raw_parts_mut(data, cap) };
        for (i, b) in area.iter_mut().enumerate() {
            *b = bytes[i % bytes.len()];
        }
    }
    let start = (start_line % (1 << 40)) * LINE as u64;
    tail.store(start, Relaxed);
    let cursor = AtomicU64::new(Cursor::at(start, 0).0);
    let took = AtomicBool::new(false);
    let piece = piece.max(1);
    let mut got = 0usize;
    let mut look = vec![0u8; piece];
    let mut buf = vec![0u8; piece];
    for look_no in 0u64.. {
        let has = seg.ring_has_data(0, 1, &cursor);
        let avail = seg.ring_available(0, 1, &cursor, piece);
        let seen = seg.ring_peek(0, 1, &mut look, &cursor);
        // Every fourth look takes the frame the peek shows by its header's template, where
        // that header is a raw data frame's.
        let tmpl = (look_no % 4 == 2 && seen >= HEADER_LEN)
            .then(|| crate::wire::Header::decode(look[..HEADER_LEN].try_into().ok()?, 0).ok())
            .flatten()
            .filter(|h| h.kind == crate::wire::Kind::Data && h.enc == crate::wire::Encoding::Raw)
            .and_then(|h| DataTemplate::new(h.ctx, h.src, h.tag, h.typecode));
        if let (Some(t), true) = (&tmpl, look_no % 8 == 6) {
            // Every other such look takes a run of up to three frames of the template.
            let mut taken: Vec<Vec<u8>> = Vec::new();
            let n = seg.ring_take_run(0, 1, t, &cursor, &mut |p| {
                taken.push(p.to_vec());
                taken.len() <= 3
            });
            taken.truncate(3);
            assert_eq!(n, taken.len(), "a run miscounted what it took");
            if let Some(first) = taken.first() {
                let shown = seen.min(HEADER_LEN + first.len()) - HEADER_LEN;
                assert_eq!(
                    look[HEADER_LEN..HEADER_LEN + shown],
                    first[..shown],
                    "a peek and a run disagree"
                );
                got += taken.iter().map(|p| HEADER_LEN + p.len()).sum::<usize>();
                assert!(
                    got <= cap * (cap / LINE),
                    "took {got} bytes from a {cap}-byte ring"
                );
                continue;
            }
        }
        if let Some(t) = tmpl {
            match seg.ring_take_templated(0, 1, &t, &mut buf, &cursor) {
                Templated::Took(n) => {
                    let n = n as usize;
                    let shown = seen.min(HEADER_LEN + n) - HEADER_LEN;
                    assert_eq!(
                        look[HEADER_LEN..HEADER_LEN + shown],
                        buf[..shown],
                        "a peek and a templated take disagree"
                    );
                    got += HEADER_LEN + n;
                    assert!(
                        got <= cap * (cap / LINE),
                        "took {got} bytes from a {cap}-byte ring"
                    );
                    continue;
                }
                Templated::Empty => assert_eq!(seen, 0, "a peek saw bytes where none were"),
                Templated::Other | Templated::Slow => {}
            }
        }
        if look_no % 2 == 1 {
            // Every other look takes a frame of `piece` bytes in one step where it can.
            let head = (piece / 2).clamp(1, 64);
            let mut front = Vec::new();
            let mut pick = |h: &[u8]| {
                front = h.to_vec();
                Some(piece - head)
            };
            match seg.ring_take(0, 1, head, &mut buf, &mut pick, &cursor) {
                TakeFrame::Took(n) => {
                    assert_eq!((head + n, seen), (piece, piece), "took more than was shown");
                    assert_eq!(look[..head], front[..], "a peek and a take disagree");
                    assert_eq!(look[head..], buf[..n], "a peek and a take disagree");
                    got += piece;
                    assert!(
                        got <= cap * (cap / LINE),
                        "took {got} bytes from a {cap}-byte ring"
                    );
                    continue;
                }
                TakeFrame::Empty => assert_eq!(seen, 0, "a peek saw bytes where none were"),
                TakeFrame::Left => unreachable!("the pick takes every frame"),
                TakeFrame::Slow => {}
            }
        }
        let k = match seg.ring_read(0, 1, &mut buf, &took, &cursor) {
            Ok(k) => k,
            Err(_) => return got,
        };
        assert_eq!(k, seen, "a peek showed {seen} bytes, the read took {k}");
        assert_eq!(
            look[..k],
            buf[..k],
            "a peek and the read that followed disagree"
        );
        if let Some(a) = avail {
            assert_eq!(a.min(piece), k, "available said {a}, the read took {k}");
        }
        if k == 0 {
            assert!(!has || avail.is_none(), "data announced, none read");
            return got;
        }
        got += k;
        // Each offset can be a valid header in one lap only (the stamp counts lines), so a
        // ring of bytes that do not change ends within a lap per line.
        assert!(
            got <= cap * (cap / LINE),
            "read {got} bytes from a {cap}-byte ring"
        );
    }
    got
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Register this process for `membarrier`'s global expedited barriers (other processes'
/// barriers then reach its cores); false where the kernel does not have them.
fn register_for_barriers() -> bool {
    use rustix::thread::{membarrier, membarrier_query, MembarrierCommand, MembarrierQuery};
    let q = membarrier_query();
    q.contains(MembarrierQuery::GLOBAL_EXPEDITED)
        && q.contains(MembarrierQuery::REGISTER_GLOBAL_EXPEDITED)
        && membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32 in shared memory; it reads no user memory
    // beyond the word itself.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0,
        );
    }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in shared memory with a relative timeout
    // that lives across the call. Spurious returns (EINTR, EAGAIN) are fine for callers.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Copy `len` bytes between our memory and process `pid`'s in as many calls of `step` as
/// it takes: `step(done)` copies the bytes from offset `done` on and returns what the
/// system call returned.
fn cma_copy(len: usize, mut step: impl FnMut(usize) -> isize) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let n = step(done);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "remote range ended early",
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Copy `dst.len()` bytes from `addr` in process `pid` (Linux cross-memory attach).
fn process_read(pid: u32, addr: u64, dst: &mut [u8]) -> io::Result<()> {
    let len = dst.len();
    cma_copy(len, |done| {
        let local = libc::iovec {
            iov_base: dst[done..].as_mut_ptr().cast(),
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: `local` covers the unread tail of `dst`, which we borrow mutably; the
        // kernel validates the remote range against the other process's mappings.
        unsafe { libc::process_vm_readv(pid as libc::pid_t, &local, 1, &remote, 1, 0) }
    })
}

/// Copy `len` bytes at `src` in our memory to `addr` in process `pid`.
fn process_write(pid: u32, src: u64, len: usize, addr: u64) -> io::Result<()> {
    cma_copy(len, |done| {
        let local = libc::iovec {
            iov_base: (src as usize + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        let remote = libc::iovec {
            iov_base: (addr as usize + done) as *mut libc::c_void,
            iov_len: len - done,
        };
        // SAFETY: the kernel only reads through `local` (it checks the range against our
        // mappings and fails with EFAULT outside them) and validates the remote range
        // against the other process's mappings; no Rust reference covers either range here.
        unsafe { libc::process_vm_writev(pid as libc::pid_t, &local, 1, &remote, 1, 0) }
    })
}

/// Whether this kernel and sandbox allow cross-memory attach at all (tried on ourselves).
fn cma_available(allowed: bool) -> bool {
    if !allowed {
        return false;
    }
    // Single-copy pulls only where the kernel already lets a process read a sibling of the
    // same user: no Yama, or Yama's classic mode (scope 0). Under scope 1 and up that would
    // take declaring "any process may trace me" (PR_SET_PTRACER_ANY), which would open every
    // rank to every process of the user; we stream through the rings instead.
    let yama_scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    if yama_scope >= 1 {
        return false;
    }
    // The call itself may be unavailable (seccomp, an old kernel).
    let src = [7u8; 16];
    let mut dst = [0u8; 16];
    process_read(std::process::id(), src.as_ptr() as u64, &mut dst).is_ok() && dst == src
}

/// Remove what launchers and agents that no longer run left in `dir` (segments and boards in
/// /dev/shm, job directories in the temp directory): every name starts `ranks-PID-`, PID
/// being the process that made it. Returns the paths removed.
pub fn reap_stale(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix("ranks-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // A zombie (dead, not yet reaped by its parent) counts as dead.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')')?.1.trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X');
        let alive = !zombie
            && rustix::process::Pid::from_raw(pid)
                .map(|p| rustix::process::test_kill_process(p).is_ok())
                .unwrap_or(false);
        if alive {
            continue;
        }
        let path = e.path();
        let gone = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The shared-memory transport of one rank.
pub(crate) struct Shm {
    seg: Arc<Segment>,
    me: usize,
    cma: bool,
    /// Per peer: our last reads found its ring more than half full (it may wait for room).
    took_some: Vec<AtomicBool>,
    /// Per peer: the last reader position we saw in our ring to it.
    tail_seen: Vec<AtomicU64>,
    /// Per peer: our [`Cursor`] in its ring to us.
    cursor: Vec<AtomicU64>,
    /// Testing knob (`RANKS_TEST_REFUSE_PULL=1`): refuse every pull, as a kernel that forbids
    /// cross-memory attach between ranks would, so the streaming fallback runs.
    refuse_pull: bool,
    /// No launcher records how ranks end (a job started by `srun --mpi=pmi2`): a peer whose
    /// process is gone counts as ended.
    unwatched: bool,
}

impl Shm {
    /// Watch peers' processes ourselves (see `unwatched`).
    pub(crate) fn without_launcher(mut self) -> Shm {
        self.unwatched = true;
        self
    }

    /// Attach to the segment at `path` as its `rank` of `size`; `spins`: this rank's
    /// waiters spin before they sleep (then its sleepers call `membarrier`, if the kernel
    /// has it, and writers need no fence; see the module's documentation).
    pub(crate) fn attach(
        path: &Path,
        rank: usize,
        size: usize,
        tuning: &crate::config::Tuning,
        spins: bool,
    ) -> Result<Shm> {
        let mut seg = Segment::open(path, size)?;
        seg.barriers = spins && register_for_barriers();
        let seg = Arc::new(seg);
        seg.attach(rank);
        Ok(Shm {
            seg,
            me: rank,
            cma: cma_available(tuning.cma),
            took_some: (0..size).map(|_| AtomicBool::new(false)).collect(),
            tail_seen: (0..size).map(|_| AtomicU64::new(0)).collect(),
            cursor: (0..size).map(|_| AtomicU64::new(0)).collect(),
            refuse_pull: tuning.refuse_pull,
            unwatched: false,
        })
    }
}

impl Shm {
    /// Something another part of this process can call to wake this rank's sleepers (the
    /// QUIC side of a job spanning hosts rings the same doorbell).
    #[cfg(feature = "quic")]
    pub(crate) fn waker(&self) -> Arc<dyn Fn() + Send + Sync> {
        let seg = self.seg.clone();
        let me = self.me;
        Arc::new(move || seg.ring_doorbell(me, false))
    }
}

impl Transport for Shm {
    fn name(&self) -> &'static str {
        "shm"
    }

    fn write(&self, peer: usize, buf: &[u8]) -> Result<usize> {
        Ok(self
            .seg
            .ring_write(self.me, peer, &[buf], &self.tail_seen[peer]))
    }

    fn write2(&self, peer: usize, a: &[u8], b: &[u8]) -> Result<usize> {
        Ok(self
            .seg
            .ring_write(self.me, peer, &[a, b], &self.tail_seen[peer]))
    }

    fn write_frame(&self, peer: usize, h: &crate::wire::Header, payload: &[u8]) -> Result<usize> {
        let seen = &self.tail_seen[peer];
        let n = match self.seg.ring_write_frame(self.me, peer, h, payload, seen) {
            Some(n) => n,
            None => self
                .seg
                .ring_write(self.me, peer, &[&h.encode(), payload], seen),
        };
        if n > 0 {
            self.seg.ring_doorbell(peer, false);
        }
        Ok(n)
    }

    fn read(&self, peer: usize, buf: &mut [u8]) -> Result<usize> {
        self.seg.ring_read(
            peer,
            self.me,
            buf,
            &self.took_some[peer],
            &self.cursor[peer],
        )
    }

    fn read_done(&self, peer: usize) {
        if self.took_some[peer].swap(false, Relaxed) {
            self.seg.ring_doorbell(peer, false);
        }
    }

    fn readable(&self, peer: usize) -> bool {
        self.seg.ring_has_data(peer, self.me, &self.cursor[peer])
    }

    fn in_place(&self, peer: usize) -> bool {
        peer < self.seg.n
    }

    fn available(&self, peer: usize, want: usize) -> Option<usize> {
        self.seg
            .ring_available(peer, self.me, &self.cursor[peer], want)
    }

    fn take_frame(
        &self,
        peer: usize,
        head: usize,
        dst: &mut [u8],
        pick: &mut dyn FnMut(&[u8]) -> Option<usize>,
    ) -> TakeFrame {
        self.seg
            .ring_take(peer, self.me, head, dst, pick, &self.cursor[peer])
    }

    fn take_templated(&self, peer: usize, tmpl: &DataTemplate, dst: &mut [u8]) -> Templated {
        self.seg
            .ring_take_templated(peer, self.me, tmpl, dst, &self.cursor[peer])
    }

    fn take_run(
        &self,
        peer: usize,
        tmpl: &DataTemplate,
        each: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Option<usize> {
        Some(
            self.seg
                .ring_take_run(peer, self.me, tmpl, &self.cursor[peer], each),
        )
    }

    fn holds(&self, _peer: usize, bytes: usize) -> bool {
        // Written in chunks of at least MIN_CHUNK bytes (but the last), each with at most a
        // header and a line of padding more.
        bytes + bytes / 16 + 2 * LINE <= self.seg.cap
    }

    fn peek(&self, peer: usize, buf: &mut [u8]) -> usize {
        self.seg.ring_peek(peer, self.me, buf, &self.cursor[peer])
    }

    fn notify(&self, peer: usize) {
        self.seg.ring_doorbell(peer, false);
    }

    fn wait(&self, _want_write: &[usize], timeout: Duration, prepare: &mut dyn FnMut() -> bool) {
        let sleepers = self.seg.sleepers_word(self.me);
        let seq = self.seg.seq_word(self.me);
        sleepers.fetch_add(1, SeqCst);
        let before = seq.load(SeqCst);
        let mut timeout = timeout;
        if self.seg.barriers {
            // Writers ring our doorbell without a fence: make their stores visible before
            // the last look. (It cannot fail once registered; if it did, a wakeup could be
            // lost, so sleep briefly.)
            if rustix::thread::membarrier(rustix::thread::MembarrierCommand::GlobalExpedited)
                .is_err()
            {
                fence(SeqCst);
                timeout = timeout.min(Duration::from_millis(1));
            }
        } else {
            fence(SeqCst);
        }
        if !prepare() {
            futex_wait(seq, before, timeout);
        }
        sleepers.fetch_sub(1, SeqCst);
    }

    fn peer_gone(&self, peer: usize) -> Option<String> {
        match self.seg.state(peer) {
            RankState::Running if self.unwatched => {
                let pid = self.seg.pid(peer);
                let alive = rustix::process::Pid::from_raw(pid as i32)
                    .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
                (!alive).then(|| format!("its process {pid} ended"))
            }
            RankState::Starting | RankState::Running => None,
            RankState::Exited => Some("it exited".into()),
            RankState::Failed => Some("it failed or was killed".into()),
        }
    }

    fn can_pull(&self, _peer: usize) -> bool {
        self.cma
    }

    fn wake_self(&self) {
        self.seg.ring_doorbell(self.me, false);
    }

    fn sync_word(&self, peer: usize, index: usize) -> Option<&AtomicU64> {
        (peer < self.seg.n && index < SYNC_WORDS).then(|| self.seg.sync_word(peer, index))
    }

    fn sync_data(&self) -> usize {
        SYNC_DATA
    }

    fn write_sync_data(&self, buf: usize, header: u64, src: &[u8]) -> bool {
        let ok = buf < SYNC_BUFS && src.len() <= SYNC_DATA;
        if ok {
            self.seg.write_sync_data(self.me, buf, header, src);
        }
        ok
    }

    fn read_sync_data(&self, peer: usize, buf: usize, dst: &mut [u8]) -> Option<u64> {
        let ok = peer < self.seg.n && buf < SYNC_BUFS && dst.len() <= SYNC_DATA;
        ok.then(|| self.seg.read_sync_data(peer, buf, dst))
    }

    fn read_own(&self, addr: u64, dst: &mut [u8]) -> bool {
        process_read(std::process::id(), addr, dst).is_ok()
    }

    fn pull(&self, peer: usize, addr: u64, dst: &mut [u8]) -> Result<bool> {
        if !self.cma || self.refuse_pull {
            return Ok(false);
        }
        let pid = self.seg.pid(peer);
        if pid == 0 {
            return Ok(false);
        }
        match process_read(pid, addr, dst) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::debug!(peer, error = %e, "cross-memory read refused; falling back to streaming");
                Ok(false)
            }
        }
    }

    fn offer_push(&self, peer: usize, token: u64) -> bool {
        self.cma
            && !self.refuse_pull
            && self
                .seg
                .offer(peer, self.me)
                .compare_exchange(0, offer_word(token, OFFER_OPEN), AcqRel, Relaxed)
                .is_ok()
    }

    fn close_offer(&self, peer: usize, token: u64) -> super::Offer {
        use super::Offer;
        let w = self.seg.offer(peer, self.me);
        match w.compare_exchange(offer_word(token, OFFER_OPEN), 0, AcqRel, Acquire) {
            Ok(_) => Offer::Withdrawn,
            Err(v) if v == offer_word(token, OFFER_TAKEN) => Offer::Taken,
            Err(v) if v == offer_word(token, OFFER_WRITTEN) => {
                w.store(0, Release);
                Offer::Written
            }
            Err(v) if v == offer_word(token, OFFER_FAILED) => {
                w.store(0, Release);
                Offer::Failed
            }
            // Not ours (never opened): nothing of it was written.
            Err(_) => Offer::Withdrawn,
        }
    }

    fn offer_open(&self, peer: usize, token: u64) -> bool {
        self.seg.offer(peer, self.me).load(Acquire) == offer_word(token, OFFER_OPEN)
    }

    fn push(&self, peer: usize, token: u64, src: u64, len: u64, dst: u64) -> bool {
        let w = self.seg.offer(self.me, peer);
        let taken = offer_word(token, OFFER_TAKEN);
        if !self.cma
            || w.compare_exchange(offer_word(token, OFFER_OPEN), taken, AcqRel, Relaxed)
                .is_err()
        {
            return false;
        }
        let pid = self.seg.pid(peer);
        let ok = pid != 0
            && process_write(pid, src, len as usize, dst)
                .inspect_err(|e| tracing::debug!(peer, error = %e, "cross-memory write refused"))
                .is_ok();
        w.store(
            offer_word(token, if ok { OFFER_WRITTEN } else { OFFER_FAILED }),
            Release,
        );
        self.seg.ring_doorbell(peer, false);
        ok
    }
}

/// A block of shared memory for user data (shared values, arrays and named blocks), a file
/// in /dev/shm mapped by every rank that uses it. Access goes through atomics only, so ranks
/// may read and write it concurrently without undefined behaviour.
pub struct SharedBlock {
    map: MmapRaw,
    path: PathBuf,
    owner: bool,
    len: usize,
}

// SAFETY: the mapping is only accessed through atomics; the pointer stays valid while the
// value lives.
unsafe impl Send for SharedBlock {}
// SAFETY: as above.
unsafe impl Sync for SharedBlock {}

impl SharedBlock {
    /// Create a zero-filled block of `len` bytes at `path`; it is removed when this value is
    /// dropped (ranks that mapped it keep their mapping).
    pub fn create(path: &Path, len: usize) -> Result<SharedBlock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io(format!("creating shared memory {}", path.display()), e))?;
        let size = len.max(1).next_multiple_of(8);
        let block = (|| {
            file.set_len(size as u64)
                .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
            MmapRaw::map_raw(&file).map_err(|e| Error::io(format!("mapping {}", path.display()), e))
        })();
        match block {
            Ok(map) => Ok(SharedBlock {
                map,
                path: path.to_owned(),
                owner: true,
                len,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Map an existing block, waiting up to `wait` for its creator to make it.
    pub fn open(path: &Path, wait: std::time::Duration) -> Result<SharedBlock> {
        let deadline = std::time::Instant::now() + wait;
        let file = loop {
            match File::options().read(true).write(true).open(path) {
                Ok(f) if f.metadata().map(|m| m.len() > 0).unwrap_or(false) => break f,
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Ok(_) => {
                    return Err(Error::Bootstrap(format!(
                        "shared memory {} was never sized",
                        path.display()
                    )))
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("opening shared memory {}", path.display()),
                        e,
                    ))
                }
            }
        };
        let map = MmapRaw::map_raw(&file)
            .map_err(|e| Error::io(format!("mapping {}", path.display()), e))?;
        let len = map.len();
        Ok(SharedBlock {
            map,
            path: path.to_owned(),
            owner: false,
            len,
        })
    }

    /// Usable length in bytes (as created; an opened block reports its mapped size).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the block has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 8-byte word at byte offset `8 * i`.
    pub fn u64_at(&self, i: usize) -> &AtomicU64 {
        let off = i * 8;
        assert!(off + 8 <= self.map.len(), "shared word {i} out of range");
        // SAFETY: in bounds and 8-aligned (page-aligned mapping); only accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    /// The 4-byte word at byte offset `4 * i`.
    pub fn u32_at(&self, i: usize) -> &AtomicU32 {
        let off = i * 4;
        assert!(off + 4 <= self.map.len(), "shared word {i} out of range");
        // SAFETY: in bounds and 4-aligned; only accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU32) }
    }

    /// The byte at offset `i`.
    pub fn u8_at(&self, i: usize) -> &AtomicU8 {
        assert!(i < self.map.len(), "shared byte {i} out of range");
        // SAFETY: in bounds; only accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(i) as *const AtomicU8) }
    }

    /// Path of the backing file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SharedBlock {
    /// Remove the block's file now (the mappings stay valid); for blocks every user has
    /// mapped already.
    pub fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SharedBlock {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod ring_tests {
    use super::*;
    use std::sync::Mutex;

    fn byte_at(pos: u64) -> u8 {
        (pos % 251) as u8
    }

    /// A stream of 48 MiB through one ring, written in pieces of random sizes (one or two
    /// buffers per write) and read by two threads of the reading process in turn, through
    /// every way a reader looks at the ring (`available`, `peek`, `read` with buffers of
    /// random sizes): every byte arrives once, in order, and is the byte written. The
    /// readers share the cursor, as a process's
    /// threads do.
    #[test]
    fn bytes_arrive_once_in_order_whatever_the_pieces_and_the_reading_threads() {
        // Not named `ranks-...`: the job tests look for leftovers by that name.
        let path = std::env::temp_dir().join(format!("ring-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        /// Removes the segment's file even when the test fails.
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _remove = Remove(path.clone());
        let seg = Arc::new(Segment::create(&path, 2).unwrap());
        const TOTAL: u64 = 48 << 20;
        let writer = {
            let seg = seg.clone();
            std::thread::spawn(move || {
                let tail_seen = AtomicU64::new(0);
                let (mut pos, mut rng) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
                while pos < TOTAL {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let len = (1 + rng % 9000).min(TOTAL - pos) as usize;
                    let bytes: Vec<u8> = (pos..pos + len as u64).map(byte_at).collect();
                    let cut = (rng >> 32) as usize % (len + 1);
                    let n = seg.ring_write(0, 1, &[&bytes[..cut], &bytes[cut..]], &tail_seen);
                    if n == 0 {
                        std::thread::yield_now();
                    }
                    pos += n as u64;
                }
            })
        };
        let cursor = AtomicU64::new(0);
        let took = AtomicBool::new(false);
        let next = Mutex::new((0u64, 1u64)); // position to read, the thread's random state
        std::thread::scope(|sc| {
            for id in 0..2u64 {
                let (seg, next, cursor, took) = (&seg, &next, &cursor, &took);
                sc.spawn(move || loop {
                    let mut g = next.lock().unwrap();
                    let (pos, rng) = &mut *g;
                    if *pos >= TOTAL {
                        return;
                    }
                    *rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407 + id);
                    let want = 1 + (*rng >> 33) as usize % 12000;
                    let mut buf = vec![0u8; want];
                    let n = match (*rng >> 20) % 3 {
                        0 => {
                            let avail = seg.ring_available(0, 1, cursor, want).unwrap();
                            let n = seg.ring_peek(0, 1, &mut buf[..want.min(avail)], cursor);
                            assert_eq!(n, want.min(avail), "a peek returned less than available");
                            let before = buf[..n].to_vec();
                            let m = seg.ring_read(0, 1, &mut buf[..n], took, cursor).unwrap();
                            assert_eq!(m, n, "a read returned less than was available");
                            assert_eq!(before, buf[..n], "peek and read disagree");
                            n
                        }
                        1 => {
                            if !seg.ring_has_data(0, 1, cursor) {
                                0
                            } else {
                                seg.ring_read(0, 1, &mut buf, took, cursor).unwrap()
                            }
                        }
                        _ => seg.ring_read(0, 1, &mut buf, took, cursor).unwrap(),
                    };
                    for (i, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, byte_at(*pos + i as u64), "byte {}", *pos + i as u64);
                    }
                    *pos += n as u64;
                    drop(g);
                    if n == 0 {
                        std::thread::yield_now();
                    }
                });
            }
        });
        writer.join().unwrap();
        assert!(!seg.ring_has_data(0, 1, &cursor));
        drop(seg);
        assert!(!path.exists());
    }
}

#[cfg(test)]
mod chunk_tests {
    use super::*;

    /// A two-rank segment in a file that goes when the test ends.
    struct Seg(Option<Segment>, PathBuf);
    impl Drop for Seg {
        fn drop(&mut self) {
            self.0.take();
            let _ = std::fs::remove_file(&self.1);
        }
    }
    fn segment(name: &str) -> Seg {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Seg(Some(Segment::create(&path, 2).unwrap()), path)
    }

    /// The writer's cache of the reader's position, the reader's cursor and its "took"
    /// flag, for ring (0, 1).
    fn sides() -> (AtomicU64, AtomicU64, AtomicBool) {
        (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false))
    }

    /// A writer whose cached view of the reader's position is old looks again before it
    /// cuts a message into a partial chunk: a reader waiting for a whole message would
    /// otherwise wait for the rest, which a sender busy elsewhere writes only later.
    #[test]
    fn a_write_is_cut_short_only_when_the_ring_is_really_full() {
        let s = segment("chunk-full-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let msg = vec![5u8; seg.cap / 4];
        for _ in 0..3 {
            assert_eq!(seg.ring_write(0, 1, &[&msg], &tail_seen), msg.len());
        }
        let mut sink = vec![0u8; seg.cap];
        while seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap() > 0 {}
        assert_eq!(seg.ring_available(0, 1, &cursor, usize::MAX), Some(0));
        // The writer's cache still shows a quarter free, the ring is empty: half of it
        // goes in whole.
        let half = vec![6u8; seg.cap / 2];
        assert_eq!(seg.ring_write(0, 1, &[&half], &tail_seen), half.len());
        // A small message is never cut: all of it or nothing.
        let small = vec![1u8; MIN_CHUNK - 1];
        loop {
            match seg.ring_write(0, 1, &[&small], &tail_seen) {
                0 => break,
                k => assert_eq!(k, small.len()),
            }
        }
    }

    /// A frame whole in one chunk is taken in one step, leaving the rest of its chunk for
    /// the next read; a frame left stays; what one step cannot take (the reader inside a
    /// chunk, a chunk round the ring's end, a corrupt header) is left to the general reads.
    #[test]
    fn a_frame_in_one_chunk_is_taken_in_one_step() {
        let s = segment("chunk-take-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let mut out = [0u8; 16];
        let take = |head: usize, n: Option<usize>, out: &mut [u8]| {
            let mut seen = Vec::new();
            let r = seg.ring_take(
                0,
                1,
                head,
                out,
                &mut |h: &[u8]| {
                    seen = h.to_vec();
                    n
                },
                &cursor,
            );
            (r, seen)
        };
        assert_eq!(take(4, Some(3), &mut out).0, TakeFrame::Empty);
        // Header "head", then 3 payload bytes; the chunk holds 2 bytes more.
        assert_eq!(
            seg.ring_write(0, 1, &[b"head", b"abc", b"xy"], &tail_seen),
            9
        );
        let (r, seen) = take(4, None, &mut out);
        assert_eq!((r, seen.as_slice()), (TakeFrame::Left, &b"head"[..]));
        assert_eq!(
            seg.ring_available(0, 1, &cursor, 100),
            Some(9),
            "left where it was"
        );
        let (r, _) = take(4, Some(3), &mut out);
        assert_eq!((r, &out[..3]), (TakeFrame::Took(3), &b"abc"[..]));
        // The reader is inside the chunk now: the general read takes the rest.
        assert_eq!(take(2, Some(0), &mut out).0, TakeFrame::Slow);
        let mut rest = [0u8; 8];
        assert_eq!(seg.ring_read(0, 1, &mut rest, &took, &cursor).unwrap(), 2);
        assert_eq!(&rest[..2], b"xy");
        // A frame longer than its chunk, or more than `out` takes: general reads.
        assert_eq!(seg.ring_write(0, 1, &[b"head", b"ab"], &tail_seen), 6);
        assert_eq!(take(4, Some(3), &mut out).0, TakeFrame::Slow);
        assert_eq!(take(4, Some(2), &mut out[..1]).0, TakeFrame::Slow);
        assert_eq!(take(4, Some(2), &mut out).0, TakeFrame::Took(2));
        assert_eq!(seg.ring_available(0, 1, &cursor, 100), Some(0));
        // A chunk round the ring's end: general reads (which copy it in two pieces).
        let at = Cursor(cursor.load(Relaxed)).next() as usize % seg.cap;
        let fill = vec![0u8; seg.cap - LINE - at - CHUNK_HEADER as usize];
        assert_eq!(seg.ring_write(0, 1, &[&fill], &tail_seen), fill.len());
        let mut sink = vec![0u8; seg.cap];
        while seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap() > 0 {}
        assert_eq!(seg.ring_write(0, 1, &[&[7u8; 100]], &tail_seen), 100);
        assert_eq!(take(4, Some(4), &mut out).0, TakeFrame::Slow);
        assert_eq!(seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(), 100);
        // A header word of another position where the next chunk belongs: general reads,
        // which report it.
        let (_, _, data) = seg.ring(0, 1);
        let at = Cursor(cursor.load(Relaxed)).next();
        seg.chunk_word(data, at)
            .store((at / 64 + 1) << 32 | 8, Release);
        assert_eq!(take(4, Some(4), &mut out).0, TakeFrame::Slow);
        assert!(seg.ring_read(0, 1, &mut sink, &took, &cursor).is_err());
    }

    /// A raw data frame with tag `tag` and `payload`, in context 3 from rank 0 with
    /// element type code 11 (a frame of `DataTemplate::new(3, 0, 7, 11)` for tag 7).
    fn template_frame(tag: i32, payload: &[u8]) -> Vec<u8> {
        use crate::wire::{Encoding, Header};
        let h = Header::data(3, 0, tag, payload.len() as u64, Encoding::Raw, 11);
        [&h.encode()[..], payload].concat()
    }

    /// A templated take takes the frame whose header has the template's fixed words and
    /// any length that fits, in one step; another frame (another tag, a longer payload
    /// than the room) stays where it is; what one step cannot take is left to the general
    /// reads, as for `ring_take`.
    #[test]
    fn a_frame_of_the_template_is_taken_where_it_lies() {
        let s = segment("templated-take-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let tmpl = DataTemplate::new(3, 0, 7, 11).unwrap();
        let frame = template_frame;
        let mut out = [0u8; 8];
        let take = |out: &mut [u8]| seg.ring_take_templated(0, 1, &tmpl, out, &cursor);
        assert_eq!(take(&mut out), Templated::Empty);
        // Another tag first: it stays, and is still there for the general reads.
        let other = frame(8, b"zz");
        assert_eq!(seg.ring_write(0, 1, &[&other], &tail_seen), other.len());
        assert_eq!(take(&mut out), Templated::Other);
        assert_eq!(seg.ring_available(0, 1, &cursor, 100), Some(other.len()));
        let mut sink = vec![0u8; 1024];
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            other.len()
        );
        // Ours: its payload lands at the front of `out`, the header's length comes back.
        let ours = frame(7, b"abcde");
        assert_eq!(seg.ring_write(0, 1, &[&ours], &tail_seen), ours.len());
        assert_eq!(take(&mut out), Templated::Took(5));
        assert_eq!(&out[..5], b"abcde");
        assert_eq!(seg.ring_available(0, 1, &cursor, 100), Some(0));
        // Ours but longer than the room: left for the general path to report.
        let long = frame(7, &[1u8; 12]);
        assert_eq!(seg.ring_write(0, 1, &[&long], &tail_seen), long.len());
        assert_eq!(take(&mut out), Templated::Other);
        assert_eq!(take(&mut [0u8; 12]), Templated::Took(12));
        // Two frames in one chunk: the first in one step, then the reader is inside the
        // chunk and the general reads take the second.
        let two = [frame(7, b"xy"), frame(7, b"uv")].concat();
        assert_eq!(seg.ring_write(0, 1, &[&two], &tail_seen), two.len());
        assert_eq!(take(&mut out), Templated::Took(2));
        assert_eq!(&out[..2], b"xy");
        assert_eq!(take(&mut out), Templated::Slow);
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            HEADER_LEN + 2
        );
        // A header that says more payload than its chunk holds: the general reads.
        let cut = frame(7, b"abcd");
        assert_eq!(
            seg.ring_write(0, 1, &[&cut[..cut.len() - 2]], &tail_seen),
            cut.len() - 2
        );
        assert_eq!(take(&mut out), Templated::Slow);
    }

    /// A run takes the frames of the template one after another while its callback takes
    /// them, frees their room and rings the writer's doorbell once for the whole run; it
    /// stops, leaving the frame where it is, at another frame, at one the callback refuses,
    /// at a chunk round the ring's end or longer than its header says, and inside a chunk
    /// that holds more than one frame.
    #[test]
    fn a_run_of_frames_of_the_template_is_taken_and_freed_at_once() {
        let s = segment("templated-run-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let tmpl = DataTemplate::new(3, 0, 7, 11).unwrap();
        let frame = template_frame;
        let write = |b: &[u8]| assert_eq!(seg.ring_write(0, 1, &[b], &tail_seen), b.len());
        let mut sink = vec![0u8; seg.cap];
        // Takes up to `max` frames; what each run was given.
        let run = |max: usize| {
            let mut got: Vec<Vec<u8>> = Vec::new();
            let n = seg.ring_take_run(0, 1, &tmpl, &cursor, &mut |p| {
                got.push(p.to_vec());
                got.len() <= max
            });
            got.truncate(max);
            assert_eq!(n, got.len());
            got
        };
        assert!(run(10).is_empty(), "nothing is there");
        // Three of ours, then another tag's: three taken, with one doorbell, and their room
        // freed; the other frame is still there for the general reads.
        for p in [&b"a1"[..], b"b22", b"c333"] {
            write(&frame(7, p));
        }
        let other = frame(8, b"zz");
        write(&other);
        let (sleepers, seq) = (seg.sleepers_word(0), seg.seq_word(0));
        sleepers.store(1, SeqCst);
        let rung = seq.load(SeqCst);
        assert_eq!(run(10), [&b"a1"[..], b"b22", b"c333"]);
        assert_eq!(seq.load(SeqCst), rung + 1, "one doorbell for the run");
        sleepers.store(0, SeqCst);
        let (_, tail, _) = seg.ring(0, 1);
        assert_eq!(tail.load(SeqCst), Cursor(cursor.load(SeqCst)).next());
        assert_eq!(seg.ring_available(0, 1, &cursor, 100), Some(other.len()));
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            other.len()
        );
        // The callback refuses the third: two taken, the third is next.
        for p in [&b"x"[..], b"y", b"z"] {
            write(&frame(7, p));
        }
        assert_eq!(run(2), [&b"x"[..], b"y"]);
        let mut out = [0u8; 4];
        assert_eq!(
            seg.ring_take_templated(0, 1, &tmpl, &mut out, &cursor),
            Templated::Took(1)
        );
        assert_eq!(out[0], b'z');
        // Two frames in one chunk: the run takes the first and stops inside the chunk; the
        // general reads take the second.
        write(&[frame(7, b"uv"), frame(7, b"wx")].concat());
        write(&frame(7, b"after"));
        assert_eq!(run(10), [&b"uv"[..]]);
        assert!(run(10).is_empty(), "inside a chunk");
        assert_eq!(
            seg.ring_read(0, 1, &mut sink[..HEADER_LEN + 2], &took, &cursor)
                .unwrap(),
            HEADER_LEN + 2
        );
        assert_eq!(&sink[HEADER_LEN..HEADER_LEN + 2], b"wx");
        assert_eq!(run(10), [&b"after"[..]]);
        // A header that says more payload than its chunk holds: not taken.
        let cut = frame(7, b"abcd");
        write(&cut[..cut.len() - 2]);
        assert!(run(10).is_empty(), "a frame longer than its chunk");
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            cut.len() - 2
        );
        // Near the ring's end: the frame before the end is taken, the one round it is
        // left to the general reads.
        let h = Cursor(cursor.load(SeqCst)).next() as usize % seg.cap;
        let fill = seg.cap - h - 4 * LINE - CHUNK_HEADER as usize;
        write(&vec![0u8; fill]);
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            fill
        );
        let (p1, p2) = ([1u8; 100], [2u8; 100]);
        write(&frame(7, &p1));
        write(&frame(7, &p2));
        assert_eq!(run(10), [p1.to_vec()]);
        assert!(run(10).is_empty(), "round the ring's end");
        assert_eq!(
            seg.ring_read(0, 1, &mut sink, &took, &cursor).unwrap(),
            HEADER_LEN + 100
        );
        assert_eq!(&sink[HEADER_LEN..HEADER_LEN + 100], &p2);
    }

    /// Small frames go into the ring in one step (`ring_write_frame`), as the same bytes
    /// `ring_write` would write; a longer one, or one that would cross the ring's end or
    /// find no room as the reader was last seen, is left to `ring_write` with nothing
    /// written. Read back, the stream is every frame in order.
    #[test]
    fn small_frames_go_in_one_step_and_read_back_as_written() {
        use crate::wire::{Encoding, Header};
        let s = segment("frame-write-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        let (mut quick, mut at_end) = (0, 0);
        let mut buf = vec![0u8; 1 << 16];
        for i in 0..30_000usize {
            let len = i % 80;
            let payload: Vec<u8> = (0..len).map(|k| (i * 7 + k) as u8).collect();
            let h = Header::data(1, 0, (i % 5) as i32, len as u64, Encoding::Raw, 3);
            let n = match seg.ring_write_frame(0, 1, &h, &payload, &tail_seen) {
                Some(n) => {
                    assert!(len <= SMALL_PAYLOAD, "{len}");
                    quick += 1;
                    n
                }
                None => {
                    if len <= SMALL_PAYLOAD {
                        at_end += 1;
                    }
                    seg.ring_write(0, 1, &[&h.encode(), &payload], &tail_seen)
                }
            };
            assert_eq!(n, HEADER_LEN + len);
            sent.extend_from_slice(&h.encode());
            sent.extend_from_slice(&payload);
            if i % 7 == 0 {
                let n = seg.ring_read(0, 1, &mut buf, &took, &cursor).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
        }
        while got.len() < sent.len() {
            let n = seg.ring_read(0, 1, &mut buf, &took, &cursor).unwrap();
            assert!(n > 0, "the ring ran dry after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == sent, "the stream read back differs");
        assert!(
            quick > 20_000 && at_end > 0,
            "{quick} in one step, {at_end} at the end"
        );

        // A full ring: the one-step write declines, and the general one finds no room
        // either; once the reader took some, frames go in again.
        let s = segment("frame-write-full-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        let h = Header::data(1, 0, 1, 8, Encoding::Raw, 3);
        let mut written = 0;
        while seg
            .ring_write_frame(0, 1, &h, b"12345678", &tail_seen)
            .is_some()
        {
            written += 1;
        }
        assert!(written > 100, "{written}");
        assert_eq!(
            seg.ring_write(0, 1, &[&h.encode(), b"12345678"], &tail_seen),
            0
        );
        assert_eq!(
            seg.ring_available(0, 1, &cursor, 1 << 30),
            Some(written * 48)
        );
        assert_eq!(
            seg.ring_read(0, 1, &mut buf[..4800], &took, &cursor)
                .unwrap(),
            4800
        );
        assert_eq!(
            seg.ring_write(0, 1, &[&h.encode(), b"12345678"], &tail_seen),
            48
        );
        assert_eq!(
            seg.ring_write_frame(0, 1, &h, b"12345678", &tail_seen),
            Some(48)
        );
    }

    /// The fuzz target's reader reads what a well-formed ring holds, across the ring's end
    /// too, and stops at a cleared word or a header of another position.
    #[test]
    fn the_fuzz_reader_reads_well_formed_chunks_and_stops() {
        let cap = 64usize << 10;
        let hdr = |pos: u64, len: u64| ((pos / 64) << 32 | len).to_le_bytes();
        let mut a = vec![0u8; cap];
        a[..8].copy_from_slice(&hdr(0, 20));
        a[64..72].copy_from_slice(&hdr(64, 5));
        assert_eq!(fuzz_ring_reader(&a, 0, 7), 25);
        // From the last line: 200 bytes wrapping round the end, then 10 more.
        let p = (cap - 64) as u64;
        a[cap - 64..cap - 56].copy_from_slice(&hdr(p, 200));
        a[192..200].copy_from_slice(&hdr(p + 256, 10));
        assert_eq!(fuzz_ring_reader(&a, p / 64, 4096), 210);
        // The same header one line off is refused.
        a[192..200].copy_from_slice(&hdr(p + 192, 10));
        assert_eq!(fuzz_ring_reader(&a, p / 64, 4096), 200);
        // Chunks that each hold a raw data frame, read a frame at a time: the reader's
        // plain reads, one-step takes, templated takes (every fourth look) and runs of
        // them (the seventh look) all agree.
        let mut f = vec![0u8; cap];
        for i in 0..12u64 {
            let at = (i * 64) as usize;
            let frame = crate::wire::Header::data(2, 1, 9, 8, crate::wire::Encoding::Raw, 5);
            f[at..at + 8].copy_from_slice(&hdr(i * 64, (HEADER_LEN + 8) as u64));
            f[at + 8..at + 8 + HEADER_LEN].copy_from_slice(&frame.encode());
            f[at + 8 + HEADER_LEN..at + 16 + HEADER_LEN].copy_from_slice(&i.to_le_bytes());
        }
        assert_eq!(
            fuzz_ring_reader(&f, 0, HEADER_LEN + 8),
            12 * (HEADER_LEN + 8)
        );
    }

    /// A word in the ring that is no header of its position (a corrupt ring, or a peer
    /// writing where it should not) is reported by a read, and no count is made of it.
    #[test]
    fn a_corrupt_chunk_header_is_reported_not_followed() {
        let s = segment("chunk-bad-test");
        let seg = s.0.as_ref().unwrap();
        let (tail_seen, cursor, took) = sides();
        assert_eq!(seg.ring_write(0, 1, &[b"hello"], &tail_seen), 5);
        let (_, _, data) = seg.ring(0, 1);
        let next = chunk_span(5);
        // The stamp of another lap, at the next chunk's place.
        seg.chunk_word(data, next)
            .store((chunk_stamp(next) + 1) << 32 | 3, Release);
        let mut buf = [0u8; 16];
        assert_eq!(
            seg.ring_read(0, 1, &mut buf[..5], &took, &cursor).unwrap(),
            5
        );
        assert_eq!(&buf[..5], b"hello");
        assert!(
            seg.ring_has_data(0, 1, &cursor),
            "a read must look, and report it"
        );
        assert_eq!(seg.ring_available(0, 1, &cursor, 1), None);
        let e = seg.ring_read(0, 1, &mut buf, &took, &cursor).unwrap_err();
        assert!(matches!(e, Error::Malformed { rank: 0, .. }), "{e}");
    }
}

#[cfg(test)]
mod offer_tests {
    use super::*;
    use crate::transport::Offer;

    /// Ranks 0 and 1 of a two-rank segment, both in this process (so cross-memory writes
    /// go to ourselves), and the segment as made (its file goes when it is dropped).
    fn pair(name: &str) -> (Segment, Shm, Shm) {
        // Not named `ranks-...`: the job tests look for leftovers by that name.
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let made = Segment::create(&path, 2).unwrap();
        let tuning = crate::config::Tuning::default();
        let a = Shm::attach(&path, 0, 2, &tuning, true).unwrap();
        let b = Shm::attach(&path, 1, 2, &tuning, true).unwrap();
        assert!(
            a.cma,
            "cross-memory attach (process_vm_readv/writev) is not allowed on this machine \
             (Yama ptrace_scope >= 1, or seccomp); shared pulls need it"
        );
        (made, a, b)
    }

    /// A rank that spins says so in its block once the kernel gave it global barriers, and
    /// a sleeper of that kind is woken by a write rung without a fence (by a rank that spins
    /// too); a rank that does not spin keeps the writer's fence (kind 0).
    #[test]
    fn sleepers_that_spin_pay_for_the_doorbell_with_a_barrier() {
        let path = std::env::temp_dir().join(format!("kind-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let made = Segment::create(&path, 3).unwrap();
        let tuning = crate::config::Tuning::default();
        let a = Shm::attach(&path, 0, 3, &tuning, true).unwrap();
        let b = Shm::attach(&path, 1, 3, &tuning, false).unwrap();
        let c = Shm::attach(&path, 2, 3, &tuning, true).unwrap();
        let has = register_for_barriers();
        assert_eq!(
            (a.seg.barriers, b.seg.barriers, c.seg.barriers),
            (has, false, has)
        );
        let kinds: Vec<u32> = (0..3)
            .map(|r| made.sleeper_kind_word(r).load(Acquire))
            .collect();
        assert_eq!(kinds, [u32::from(has), 0, u32::from(has)]);
        // Rank 0 sleeps (a long nap: only the doorbell ends it early) until the message of
        // `from` is there; `from` writes it and rings.
        for (from, writer) in [(2, &c), (1, &b)] {
            std::thread::scope(|sc| {
                let sleeper = sc.spawn(|| {
                    let t0 = std::time::Instant::now();
                    let mut buf = [0u8; 5];
                    while !a.readable(from) {
                        a.wait(&[], Duration::from_secs(30), &mut || a.readable(from));
                    }
                    assert_eq!(a.read(from, &mut buf).unwrap(), 5);
                    (buf, t0.elapsed())
                });
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(writer.write(0, b"wake!").unwrap(), 5);
                writer.notify(0);
                let (buf, took) = sleeper.join().unwrap();
                assert_eq!(&buf, b"wake!");
                assert!(took < Duration::from_secs(30), "woken, not timed out");
            });
        }
        drop((a, b, c));
        drop(made);
    }

    #[test]
    fn an_offer_is_written_once_by_the_sender_or_taken_back_never_both() {
        let (_g, sender, receiver) = pair("offer-test");
        let src: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        let (s, d) = (src.as_ptr() as u64, dst.as_mut_ptr() as u64);
        // One offer per ring at a time; only the token offered is taken.
        assert!(receiver.offer_push(0, 7));
        assert!(!receiver.offer_push(0, 8), "an offer is open already");
        assert!(receiver.offer_open(0, 7) && !receiver.offer_open(0, 8));
        assert!(!sender.push(1, 8, s, 100, d), "not the offered token");
        assert!(sender.push(1, 7, s, src.len() as u64, d));
        assert_eq!(dst, src);
        assert!(!sender.push(1, 7, s, 100, d), "an offer is taken once");
        assert_eq!(receiver.close_offer(0, 7), Offer::Written);
        // Taken back before the sender came: the sender writes nothing.
        dst.fill(0);
        assert!(receiver.offer_push(0, 9), "the word was cleared");
        assert_eq!(receiver.close_offer(0, 9), Offer::Withdrawn);
        assert!(!sender.push(1, 9, s, 100, d));
        assert!(dst.iter().all(|&b| b == 0));
        // A write the kernel refuses (no memory there) ends the offer as failed.
        assert!(receiver.offer_push(0, 10));
        assert!(!sender.push(1, 10, s, 100, 8));
        assert_eq!(receiver.close_offer(0, 10), Offer::Failed);
        // Offers to the other direction's ring are separate.
        assert!(sender.offer_push(1, 10) && receiver.offer_push(0, 11));
        assert_eq!(sender.close_offer(1, 10), Offer::Withdrawn);
        assert_eq!(receiver.close_offer(0, 11), Offer::Withdrawn);
    }

    /// The sender's thread tries to take each offer while the receiver takes it back after
    /// a random delay: whichever wins, the receiver's view and the sender's agree, and the
    /// part is written in full or not at all.
    #[test]
    fn a_race_between_taking_and_taking_back_has_one_winner() {
        let (_g, sender, receiver) = pair("offer-race-test");
        let src: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
        let (to_sender, jobs) = std::sync::mpsc::channel::<(u64, u64)>();
        let (to_receiver, pushed) = std::sync::mpsc::channel::<bool>();
        let s = src.as_ptr() as u64;
        let len = src.len() as u64;
        let (mut written, mut withdrawn) = (0, 0);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                for (token, dst) in jobs {
                    to_receiver
                        .send(sender.push(1, token, s, len, dst))
                        .unwrap();
                }
            });
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            for token in 1..=2000u64 {
                let mut dst = vec![0u8; src.len()];
                assert!(receiver.offer_push(0, token));
                to_sender.send((token, dst.as_mut_ptr() as u64)).unwrap();
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for _ in 0..rng % 20_000 {
                    std::hint::spin_loop();
                }
                let end = loop {
                    match receiver.close_offer(0, token) {
                        Offer::Taken => std::hint::spin_loop(),
                        end => break end,
                    }
                };
                let did = pushed.recv().unwrap();
                match end {
                    Offer::Written => {
                        assert!(did);
                        assert!(dst == src, "round {token}: the part is not all there");
                        written += 1;
                    }
                    Offer::Withdrawn => {
                        assert!(!did, "round {token}: pushed after it was taken back");
                        assert!(dst.iter().all(|&b| b == 0), "round {token}: written into");
                        withdrawn += 1;
                    }
                    other => panic!("round {token}: {other:?}"),
                }
            }
            drop(to_sender);
        });
        // Both outcomes happen (the delays span a push's length many times over).
        assert!(
            written > 0 && withdrawn > 0,
            "{written} written, {withdrawn} withdrawn"
        );
    }
}

#[cfg(test)]
mod reap_tests {
    use super::reap_stale;

    #[test]
    fn only_what_dead_processes_left_is_removed() {
        let dir = std::env::temp_dir().join(format!("reap-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        for pid in [live, dead] {
            std::fs::write(dir.join(format!("ranks-{pid}-job-board")), b"x").unwrap();
            std::fs::create_dir(dir.join(format!("ranks-{pid}-job"))).unwrap();
            std::fs::write(dir.join(format!("ranks-{pid}-job/ca.der")), b"x").unwrap();
        }
        std::fs::write(dir.join("ranks-notapid-x"), b"x").unwrap();
        let mut removed = reap_stale(&dir);
        removed.sort();
        let mut want = vec![
            dir.join(format!("ranks-{dead}-job")),
            dir.join(format!("ranks-{dead}-job-board")),
        ];
        want.sort();
        assert_eq!(removed, want);
        assert!(dir.join(format!("ranks-{live}-job/ca.der")).exists());
        assert!(dir.join(format!("ranks-{live}-job-board")).exists());
        assert!(dir.join("ranks-notapid-x").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
