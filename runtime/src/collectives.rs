//! Collective operations, written once over point-to-point in the communicator's collective
//! context (`ctx + 1`), so they never match user messages. Every call takes the next
//! collective sequence number, which goes into the tags: two collectives in flight on one
//! communicator (a nonblocking one and the next call) never see each other's messages.
//!
//! Algorithms (thresholds in bytes, tunable by environment variable):
//! - barrier: dissemination, ceil(log2 n) rounds.
//! - broadcast: binomial tree; from `RANKS_BCAST_LARGE` (512 KiB) on more than 2 ranks,
//!   binomial scatter + ring all-gather.
//! - reduce: binomial tree (in rank order for non-commutative operations).
//! - all_reduce: recursive doubling (with the extra ranks folded in for non-powers of two);
//!   from `RANKS_ALLREDUCE_LARGE` (64 KiB) with a commutative operation, ring reduce-scatter
//!   + ring all-gather, reducing in place in the receive buffer.
//! - scan / exscan: recursive doubling. reduce_scatter: ring (commutative) or reduce +
//!   scatter. gather / scatter: linear from / to the root. all_gather: ring.
//!   all_to_all: pairwise exchange.

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::comm::{typecode, Comm, Request, Source, Status};
use crate::error::{Error, Result};
use crate::op::{Number, Op};
use crate::protocol::matching::Pattern;
use crate::wire::Encoding;

/// Tag for `round` of collective number `seq`.
pub(crate) fn ctag(seq: u32, round: u32) -> i32 {
    (((seq & 0x1f_ffff) << 10) | (round & 0x3ff)) as i32
}

/// The round whose tag carries a member's notice that it left collective `seq` with an
/// error (see `Comm::fail_together`); no algorithm's step uses it.
const ABORT_ROUND: u32 = 0x3ff;

/// The element type code a failure notice carries: even, where every type's code is odd
/// (`comm::typecode`), so that no step's message is taken for one.
pub(crate) const NOTICE_TYPECODE: u32 = 0xfa11_ed00;

/// The collective number a step's tag (`ctag`) belongs to.
pub(crate) fn seq_of(tag: i32) -> u32 {
    (tag as u32) >> 10
}

/// The tag of a failure notice for collective `seq`.
pub(crate) fn notice_tag(seq: u32) -> i32 {
    ctag(seq, ABORT_ROUND)
}

/// Where another member's failure notice for collective `seq` in (collective) context
/// `ctx` would be.
pub(crate) fn notice_pattern(ctx: u32, seq: u32) -> Pattern {
    Pattern {
        ctx,
        src: crate::protocol::matching::ANY_SOURCE,
        tag: notice_tag(seq),
    }
}

/// What a rank that left a collective with error `e` tells the other members: its own
/// finding that the operands do not match (another type, another length); nothing for
/// other errors (lost ranks are found by everyone, and a notice received is not passed on).
pub(crate) fn notice_of(e: &Error) -> Option<String> {
    matches!(
        e,
        Error::CollectiveMismatch { .. }
            | Error::TypeMismatch { .. }
            | Error::Truncated { .. }
            | Error::InvalidArgument(_)
    )
    .then(|| e.to_string())
}

/// Error `e` of a collective call, as its caller should see it: a message of the call's
/// that does not decode as this rank's type, or is longer than this rank's part, is the
/// members' operands not matching (`CollectiveMismatch`). Its tag is the call's own, not
/// one the caller chose, and nothing of it stays queued for anyone to receive.
pub(crate) fn in_collective(e: Error) -> Error {
    match e {
        Error::TypeMismatch {
            rank,
            expected,
            detail,
            ..
        } => undecodable(rank, expected, &detail),
        Error::Truncated {
            rank,
            len,
            capacity,
            ..
        } => Error::CollectiveMismatch {
            rank,
            detail: format!(
                "a message of rank {rank}'s in this call has {len} bytes where this rank expects {capacity}"
            ),
        },
        e => e,
    }
}

/// Rank `rank`'s operand to a collective call does not decode as this rank's type
/// `expected`, for the reason `detail`.
fn undecodable(rank: usize, expected: &str, detail: &str) -> Error {
    Error::CollectiveMismatch {
        rank,
        detail: format!(
            "rank {rank}'s operand does not decode as this rank's {expected}: {detail}"
        ),
    }
}

/// Start and length of block `i` when `len` items are split into `n` nearly equal blocks.
fn block(len: usize, n: usize, i: usize) -> (usize, usize) {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    (start, base + usize::from(i < extra))
}

/// Disjoint `&src[a]` and `&mut dst[b]` views of one buffer.
fn split_pair<T>(
    buf: &mut [T],
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> (&[T], &mut [T]) {
    if a.is_empty() {
        return (&[], &mut buf[b]);
    }
    if b.is_empty() {
        return (&buf[a], &mut []);
    }
    assert!(a.end <= b.start || b.end <= a.start, "blocks overlap");
    if a.end <= b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&hi[..a.end - a.start], &mut lo[b])
    }
}

/// Where each block starts when blocks of `counts` items are laid end to end.
pub(crate) fn offsets(counts: &[usize]) -> Vec<usize> {
    counts
        .iter()
        .scan(0, |acc, &c| {
            let s = *acc;
            *acc += c;
            Some(s)
        })
        .collect()
}

/// A serde operand of a collective as it travels: the fingerprint of its type (4 bytes,
/// little-endian), then its postcard bytes. Ranks that disagree on the type then fail with
/// `CollectiveMismatch` (`Comm::decode_bytes`) instead of decoding bytes that happen to fit (a
/// `u64` taken for an `i64`).
fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let fp = crate::fingerprint::of::<T>().to_le_bytes();
    postcard::to_extend(value, fp.to_vec()).map_err(|e| Error::Encode(e.to_string()))
}

/// Encode each value (`encode_value`); the bytes end to end, and each one's length.
fn encode_blocks<T: Serialize>(values: &[T]) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut bytes = Vec::new();
    let mut counts = Vec::with_capacity(values.len());
    for v in values {
        let b = encode_value(v)?;
        counts.push(b.len());
        bytes.extend_from_slice(&b);
    }
    Ok((bytes, counts))
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::InvalidArgument(format!(
            "{what}: buffer has {got} elements, expected {want}"
        )));
    }
    Ok(())
}

impl Comm {
    pub(crate) fn coll_ctx(&self) -> u32 {
        self.ctx + 1
    }

    pub(crate) fn next_seq(&self) -> u32 {
        self.coll_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Start collective `op`: its sequence number, and a note of the call for hang
    /// diagnosis (kept until the guard drops).
    fn begin(&self, op: &'static str, root: Option<usize>) -> (u32, crate::diag::CallGuard) {
        let seq = self.next_seq();
        (seq, self.noting(op, seq, root))
    }

    /// The result of collective `seq` here, after telling the other members when it is an
    /// error of this rank's own finding (`notice_of`): they may be waiting for a step of ours
    /// that will not come, and each gets `Error::CollectiveFailed` instead of waiting for
    /// ever.
    fn fail_together<R>(&self, seq: u32, r: Result<R>) -> Result<R> {
        let r = r.map_err(in_collective);
        if let Some(why) = r.as_ref().err().and_then(notice_of) {
            for dest in (0..self.size()).filter(|&d| d != self.rank()) {
                // A notice is small (sent eagerly); a member gone by now needs none.
                let enc = (Encoding::Raw, NOTICE_TYPECODE);
                let _ = self.send_bytes_as(
                    self.coll_ctx(),
                    dest,
                    notice_tag(seq),
                    why.as_bytes(),
                    enc,
                    false,
                );
            }
        }
        r
    }

    /// The note of collective call `op` number `seq` (for the thread that runs it).
    fn noting(&self, op: &'static str, seq: u32, root: Option<usize>) -> crate::diag::CallGuard {
        crate::diag::call(
            crate::diag::Call {
                op,
                comm: self.ctx,
                seq: u64::from(seq),
                root,
            },
            crate::trace::Cat::Coll,
        )
    }

    pub(crate) fn check_root(&self, root: usize) -> Result<()> {
        if root >= self.size() {
            return Err(Error::InvalidRank {
                rank: root as i64,
                size: self.size(),
            });
        }
        Ok(())
    }

    // ----- point-to-point in the collective context -----------------------------------------

    pub(crate) fn c_send<T: Pod>(&self, dest: usize, tag: i32, data: &[T]) -> Result<()> {
        self.send_bytes(
            self.coll_ctx(),
            dest,
            tag,
            bytemuck::cast_slice(data),
            Encoding::Raw,
            typecode::<T>(),
        )
    }

    pub(crate) fn c_isend<'a, T: Pod>(
        &'a self,
        dest: usize,
        tag: i32,
        data: &'a [T],
    ) -> Result<Request<'a, ()>> {
        self.isend_borrowed(
            self.coll_ctx(),
            dest,
            tag,
            bytemuck::cast_slice(data),
            (Encoding::Raw, typecode::<T>()),
            false,
        )
    }

    pub(crate) fn c_recv_into<T: Pod>(
        &self,
        src: usize,
        tag: i32,
        buf: &mut [T],
    ) -> Result<Status> {
        let st = self.recv_into_pat(self.pattern(self.coll_ctx(), Source::from(src), tag)?, buf)?;
        if st.len != std::mem::size_of_val(buf) {
            return Err(Error::InvalidArgument(format!(
                "collective: rank {src} contributed {} bytes where {} were expected (do all ranks pass the same counts?)",
                st.len,
                std::mem::size_of_val(buf)
            )));
        }
        Ok(st)
    }

    fn c_recv_vec<T: Pod>(&self, src: usize, tag: i32) -> Result<Vec<T>> {
        Ok(self
            .recv_vec_pat(self.pattern(self.coll_ctx(), Source::from(src), tag)?)?
            .0)
    }

    /// Send `data` to `dest` and receive exactly `buf.len()` items from `src` at once.
    pub(crate) fn c_exchange<T: Pod>(
        &self,
        dest: usize,
        data: &[T],
        src: usize,
        buf: &mut [T],
        tag: i32,
    ) -> Result<()> {
        if std::mem::size_of_val(data) < self.core.tuning.rendezvous_threshold {
            // Eager: the send never waits for the receiver (a full ring is drained by the
            // wait's progress), so send, then receive, with no request to keep.
            self.c_send(dest, tag, data)?;
            self.c_recv_into(src, tag, buf)?;
            return Ok(());
        }
        let s = self.c_isend(dest, tag, data)?;
        self.c_recv_into(src, tag, buf)?;
        s.wait()
    }

    // ----- barrier -------------------------------------------------------------------------

    /// Block until every rank of the communicator has called `barrier`.
    pub fn barrier(&self) -> Result<()> {
        let (seq, _call) = self.begin("barrier", None);
        self.barrier_seq(seq)
    }

    fn barrier_seq(&self, seq: u32) -> Result<()> {
        if let Some(l) = self.two_level() {
            return self.barrier_two_level(seq, l);
        }
        if let Some(slot) = self.host_slot() {
            let at = crate::host_sync::mark(seq, crate::host_sync::Kind::Barrier);
            return self.host_barrier(slot, at);
        }
        self.dissemination(seq, 0, self.size(), self.rank(), |p| p)
    }

    /// Dissemination barrier among `n` ranks, this one at position `i`, position `p` being
    /// rank `at(p)`; tags from round `round0` of collective `seq`.
    pub(crate) fn dissemination(
        &self,
        seq: u32,
        round0: u32,
        n: usize,
        i: usize,
        at: impl Fn(usize) -> usize,
    ) -> Result<()> {
        let (mut dist, mut round) = (1, round0);
        let mut token = [0u8; 0];
        while dist < n {
            let tag = ctag(seq, round);
            self.c_exchange(
                at((i + dist) % n),
                &[0u8; 0],
                at((i + n - dist) % n),
                &mut token,
                tag,
            )?;
            dist *= 2;
            round += 1;
        }
        Ok(())
    }

    /// How many items each of `size` equal blocks of a `len`-item buffer holds (an error
    /// naming `what` when `len` does not split evenly).
    fn equal_blocks(&self, what: &str, len: usize) -> Result<usize> {
        let n = self.size();
        if !len.is_multiple_of(n) {
            return Err(Error::InvalidArgument(format!(
                "{what}: a buffer of {len} items is not {n} equal blocks"
            )));
        }
        Ok(len / n)
    }

    // ----- broadcast -----------------------------------------------------------------------

    /// Copy `buf` from `root` to every rank (all ranks pass buffers of the same length).
    pub fn broadcast_slice<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("broadcast_slice", Some(root));
        self.fail_together(seq, self.bcast_seq(seq, root, buf))
    }

    fn bcast_seq<T: Pod>(&self, seq: u32, root: usize, buf: &mut [T]) -> Result<()> {
        let n = self.size();
        let large = self.core.tuning.bcast_large;
        // Large broadcasts keep the flat scatter + ring all-gather (bandwidth-optimal; the
        // two levels measured slower for them).
        if let (Some(l), true) = (self.two_level(), std::mem::size_of_val(buf) < large) {
            return self.bcast_two_level(seq, l, root, buf);
        }
        if n > 2 && std::mem::size_of_val(buf) >= large && buf.len() >= n {
            return self.bcast_scatter_allgather(seq, root, buf);
        }
        let vrank = (self.rank() + n - root) % n;
        let tag = ctag(seq, 0);
        let mut mask = 1;
        while mask < n {
            if vrank & mask != 0 {
                self.c_recv_into((vrank - mask + root) % n, tag, buf)?;
                break;
            }
            mask <<= 1;
        }
        mask >>= 1;
        let mut sends = Vec::new();
        while mask > 0 {
            if vrank + mask < n {
                sends.push(self.c_isend((vrank + mask + root) % n, tag, &*buf)?);
            }
            mask >>= 1;
        }
        crate::comm::wait_all(sends)?;
        Ok(())
    }

    /// Large broadcast: binomial scatter of n blocks, then ring all-gather.
    fn bcast_scatter_allgather<T: Pod>(&self, seq: u32, root: usize, buf: &mut [T]) -> Result<()> {
        let n = self.size();
        let vrank = (self.rank() + n - root) % n;
        let len = buf.len();
        let real = |v: usize| (v + root) % n;
        // Items of the blocks of vranks [v, v + count).
        let span = |v: usize, count: usize| {
            let (s, _) = block(len, n, v);
            let end_v = (v + count).min(n);
            let e = if end_v == n {
                len
            } else {
                block(len, n, end_v).0
            };
            s..e
        };
        // Scatter: each vrank gets the blocks of its subtree.
        let tag = ctag(seq, 0);
        let mut mask = 1;
        while mask < n {
            if vrank & mask != 0 {
                let r = span(vrank, mask);
                self.c_recv_into(real(vrank - mask), tag, &mut buf[r])?;
                break;
            }
            mask <<= 1;
        }
        mask >>= 1;
        while mask > 0 {
            if vrank + mask < n {
                let r = span(vrank + mask, mask);
                self.c_send(real(vrank + mask), tag, &buf[r])?;
            }
            mask >>= 1;
        }
        // Ring all-gather over vrank blocks.
        let next = real((vrank + 1) % n);
        let prev = real((vrank + n - 1) % n);
        for step in 0..n - 1 {
            let sb = (vrank + n - step) % n;
            let rb = (vrank + n - step - 1) % n;
            let (s, sl) = block(len, n, sb);
            let (r, rl) = block(len, n, rb);
            let (src, dst) = split_pair(buf, s..s + sl, r..r + rl);
            self.c_exchange(next, src, prev, dst, ctag(seq, 1 + step as u32))?;
        }
        Ok(())
    }

    /// Broadcast any serde value from `root`; other ranks' `value` is replaced.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let mut config = if world.rank() == 0 { vec!["fast".to_string(), "quiet".into()] } else { vec![] };
    /// world.broadcast(0, &mut config)?;
    /// assert_eq!(config, ["fast", "quiet"]);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn broadcast<T: Serialize + DeserializeOwned>(
        &self,
        root: usize,
        value: &mut T,
    ) -> Result<()> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("broadcast", Some(root));
        let mut bytes = if self.rank() == root {
            encode_value(value)?
        } else {
            Vec::new()
        };
        // The bytes go on before they are decoded: a rank that cannot decode them fails
        // alone, and no other rank waits for it.
        let from = self.broadcast_bytes(seq, 0, root, &mut bytes)?;
        if let Some(from) = from {
            *value = self.decode_bytes(&bytes, from)?;
        }
        Ok(())
    }

    /// The binomial tree of `broadcast` for the bytes of a value, in round `round` of
    /// collective `seq`: `bytes` is the root's on the root and replaced by them elsewhere.
    /// The rank they came from (`None` on the root).
    fn broadcast_bytes(
        &self,
        seq: u32,
        round: u32,
        root: usize,
        bytes: &mut Vec<u8>,
    ) -> Result<Option<usize>> {
        let n = self.size();
        let vrank = (self.rank() + n - root) % n;
        let tag = ctag(seq, round);
        let mut from = None;
        let mut mask = 1;
        while mask < n {
            if vrank & mask != 0 {
                let parent = (vrank - mask + root) % n;
                *bytes = self.c_recv_vec::<u8>(parent, tag)?;
                from = Some(parent);
                break;
            }
            mask <<= 1;
        }
        mask >>= 1;
        while mask > 0 {
            if vrank + mask < n {
                self.c_send((vrank + mask + root) % n, tag, bytes)?;
            }
            mask >>= 1;
        }
        Ok(from)
    }

    /// Decode one value from each block of `all` (block r came from rank r).
    fn decode_blocks<T: DeserializeOwned>(&self, all: &[u8], counts: &[usize]) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(counts.len());
        let mut pos = 0;
        for (r, &c) in counts.iter().enumerate() {
            out.push(self.decode_bytes(&all[pos..pos + c], r)?);
            pos += c;
        }
        Ok(out)
    }

    /// The value of a collective's operand made by `encode_value`, sent by rank `from`:
    /// `CollectiveMismatch` when it was sent as another type or does not decode.
    fn decode_bytes<T: DeserializeOwned>(&self, bytes: &[u8], from: usize) -> Result<T> {
        let mismatch = |detail: String| undecodable(from, std::any::type_name::<T>(), &detail);
        let Some((fp, body)) = bytes.split_first_chunk::<4>() else {
            return Err(mismatch(format!(
                "{} bytes, too few for a value",
                bytes.len()
            )));
        };
        let fp = u32::from_le_bytes(*fp);
        if fp != crate::fingerprint::of::<T>() {
            return Err(mismatch(crate::fingerprint::sent_as(fp)));
        }
        match postcard::take_from_bytes::<T>(body) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(mismatch(format!("{} bytes left over", rest.len()))),
            Err(e) => Err(mismatch(e.to_string())),
        }
    }

    // ----- reduce --------------------------------------------------------------------------

    /// Combine every rank's `send` with `op`; the result lands in `recv` on `root` (other
    /// ranks' `recv` is not touched and may be empty).
    pub fn reduce_slice<T: Pod, O: Op<T> + ?Sized>(
        &self,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        self.check_root(root)?;
        if self.rank() == root {
            check_len("reduce", recv.len(), send.len())?;
        }
        let (seq, _call) = self.begin("reduce_slice", Some(root));
        self.fail_together(seq, self.reduce_seq(seq, root, send, recv, op))
    }

    fn reduce_seq<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        root: usize,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        if let (Some(l), true) = (self.two_level(), op.commutative()) {
            let mut acc = send.to_vec();
            self.reduce_two_level(seq, l, root, &mut acc, op)?;
            if self.rank() == root {
                recv.copy_from_slice(&acc);
            }
            return Ok(());
        }
        let n = self.size();
        let me = self.rank();
        // Non-commutative: reduce in rank order towards rank 0, then hand over to the root.
        let tree_root = if op.commutative() { root } else { 0 };
        let vrank = (me + n - tree_root) % n;
        let mut acc = send.to_vec();
        let mut tmp = vec![T::zeroed(); send.len()];
        let tag = ctag(seq, 0);
        let mut mask = 1;
        while mask < n {
            if vrank & mask != 0 {
                self.c_send((vrank - mask + tree_root) % n, tag, &acc)?;
                break;
            }
            if vrank + mask < n {
                self.c_recv_into((vrank + mask + tree_root) % n, tag, &mut tmp)?;
                // `tmp` holds higher ranks: acc = acc ∘ tmp.
                op.combine(&acc, &mut tmp);
                std::mem::swap(&mut acc, &mut tmp);
            }
            mask <<= 1;
        }
        if tree_root != root {
            let tag = ctag(seq, 1);
            if me == tree_root {
                self.c_send(root, tag, &acc)?;
            } else if me == root {
                self.c_recv_into(tree_root, tag, recv)?;
            }
        } else if me == root {
            recv.copy_from_slice(&acc);
        }
        Ok(())
    }

    /// Reduce any serde value with `f(lower, higher)` (associative; applied in rank order);
    /// `Some(result)` on `root`, `None` elsewhere.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let words = vec![format!("r{}", world.rank())];
    /// // Concatenation is associative, not commutative: applied in rank order.
    /// let all = world.reduce(0, words, |mut a, b| { a.extend(b); a })?;
    /// if world.rank() == 0 {
    ///     assert_eq!(all.unwrap().len(), world.size());
    /// }
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn reduce<T: Serialize + DeserializeOwned>(
        &self,
        root: usize,
        value: T,
        f: impl Fn(T, T) -> T,
    ) -> Result<Option<T>> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("reduce", Some(root));
        let r = self.reduce_value(seq, root, value, &f);
        self.fail_together(seq, r)
    }

    /// The binomial tree of `reduce` in rounds 0 and 1 of collective `seq`.
    fn reduce_value<T: Serialize + DeserializeOwned>(
        &self,
        seq: u32,
        root: usize,
        value: T,
        f: &impl Fn(T, T) -> T,
    ) -> Result<Option<T>> {
        let (n, me) = (self.size(), self.rank());
        let mut acc = value;
        let tag = ctag(seq, 0);
        let mut mask = 1;
        while mask < n {
            if me & mask != 0 {
                self.c_send(me - mask, tag, &encode_value(&acc)?)?;
                break;
            }
            if me + mask < n {
                let bytes = self.c_recv_vec::<u8>(me + mask, tag)?;
                let higher: T = self.decode_bytes(&bytes, me + mask)?;
                acc = f(acc, higher);
            }
            mask <<= 1;
        }
        let tag = ctag(seq, 1);
        if root != 0 {
            if me == 0 {
                self.c_send(root, tag, &encode_value(&acc)?)?;
                return Ok(None);
            }
            if me == root {
                let bytes = self.c_recv_vec::<u8>(0, tag)?;
                return Ok(Some(self.decode_bytes(&bytes, 0)?));
            }
            return Ok(None);
        }
        Ok((me == 0).then_some(acc))
    }

    /// Reduce any serde value with `f(lower, higher)`; every rank gets the result.
    ///
    /// One collective: a reduction to rank 0, then a broadcast of the result. A rank that
    /// finds another type among the values tells the others, which fail with
    /// `CollectiveFailed` where they would have waited for the result.
    pub fn all_reduce<T: Serialize + DeserializeOwned>(
        &self,
        value: T,
        f: impl Fn(T, T) -> T,
    ) -> Result<T> {
        let (seq, _call) = self.begin("all_reduce", None);
        let r = self.reduce_value(seq, 0, value, &f);
        let total = self.fail_together(seq, r)?;
        let mut bytes = match &total {
            Some(v) => encode_value(v)?,
            None => Vec::new(),
        };
        match self.broadcast_bytes(seq, 2, 0, &mut bytes)? {
            Some(from) => self.decode_bytes(&bytes, from),
            None => total
                .ok_or_else(|| Error::InvalidArgument("all_reduce: rank 0 had no result".into())),
        }
    }

    // ----- all_reduce ----------------------------------------------------------------------

    /// Combine every rank's `send` with `op` into every rank's `recv`.
    ///
    /// ```
    /// use ranks::op::{Max, Sum};
    /// let world = ranks::init()?;
    /// let mine = [world.rank() as f64, 1.0];
    /// let mut sum = [0.0; 2];
    /// world.all_reduce_slice(&mine, &mut sum, &Sum)?;
    /// assert_eq!(sum[1], world.size() as f64);
    /// let mut top = [0.0; 2];
    /// world.all_reduce_slice(&mine, &mut top, &Max)?;
    /// assert_eq!(top[0], (world.size() - 1) as f64);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn all_reduce_slice<T: Pod, O: Op<T> + ?Sized>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        check_len("all_reduce", recv.len(), send.len())?;
        let (seq, _call) = self.begin("all_reduce_slice", None);
        self.fail_together(seq, self.all_reduce_seq(seq, send, recv, op))
    }

    fn all_reduce_seq<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        let n = self.size();
        let large = self.core.tuning.allreduce_large;
        if let (Some(l), true) = (
            self.two_level(),
            op.commutative() && std::mem::size_of_val(send) < large,
        ) {
            recv.copy_from_slice(send);
            return self.allreduce_two_level(seq, l, recv, op);
        }
        if let Some(slot) =
            self.host_reduce_slot(std::mem::size_of_val(send), std::mem::align_of::<T>())
        {
            return self.host_all_reduce(slot, seq, send, recv, op);
        }
        if n > 1 && op.commutative() && std::mem::size_of_val(send) >= large && send.len() >= n {
            // Ring reduce-scatter straight into `recv` (no staging copy), then all-gather.
            self.ring_reduce_scatter_from(seq, send, recv, op)?;
            return self.ring_allgather_blocks(seq, 512, recv);
        }
        recv.copy_from_slice(send);
        self.allreduce_seq(seq, recv, op)
    }

    /// Ring reduce-scatter reading contributions from `send` and accumulating in `recv`:
    /// each step receives a partial block straight into `recv` and adds our own part of it.
    /// Afterwards rank r holds the reduced block r. Commutative operations only.
    fn ring_reduce_scatter_from<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let len = send.len();
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        for step in 0..n - 1 {
            let sb = (me + 2 * n - step - 1) % n;
            let rb = (me + 2 * n - step - 2) % n;
            let (s, sl) = block(len, n, sb);
            let (r, rl) = block(len, n, rb);
            let tag = ctag(seq, step as u32);
            if step == 0 {
                self.c_exchange(next, &send[s..s + sl], prev, &mut recv[r..r + rl], tag)?;
            } else {
                let (src, dst) = split_pair(recv, s..s + sl, r..r + rl);
                self.c_exchange(next, src, prev, dst, tag)?;
            }
            op.combine(&send[r..r + rl], &mut recv[r..r + rl]);
        }
        Ok(())
    }

    /// `all_reduce_slice` with the buffer as both input and output.
    pub fn all_reduce_in_place<T: Pod, O: Op<T> + ?Sized>(
        &self,
        buf: &mut [T],
        op: &O,
    ) -> Result<()> {
        let (seq, _call) = self.begin("all_reduce_in_place", None);
        self.fail_together(seq, self.allreduce_seq(seq, buf, op))
    }

    /// `reduce_slice` with the buffer as both input and output: every rank's `buf` is its
    /// contribution, and on `root` it becomes the result (other ranks' `buf` is left as it
    /// was). MPI's `MPI_IN_PLACE` at the root.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let mut v = [world.rank() as u64 + 1, 10];
    /// world.reduce_in_place(0, &mut v, &ranks::op::Sum)?;
    /// if world.rank() == 0 {
    ///     let n = world.size() as u64;
    ///     assert_eq!(v, [n * (n + 1) / 2, 10 * n]);
    /// }
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn reduce_in_place<T: Pod, O: Op<T> + ?Sized>(
        &self,
        root: usize,
        buf: &mut [T],
        op: &O,
    ) -> Result<()> {
        let mine = buf.to_vec();
        let mut out = vec![T::zeroed(); if self.rank() == root { buf.len() } else { 0 }];
        self.reduce_slice(root, &mine, &mut out, op)?;
        if self.rank() == root {
            buf.copy_from_slice(&out);
        }
        Ok(())
    }

    /// `scan_slice` in place: `buf` holds this rank's contribution and becomes the
    /// reduction of ranks `0..=me`.
    pub fn scan_in_place<T: Pod, O: Op<T> + ?Sized>(&self, buf: &mut [T], op: &O) -> Result<()> {
        let mine = buf.to_vec();
        self.scan_slice(&mine, buf, op)
    }

    /// `exscan_slice` in place: `buf` becomes the reduction of ranks `0..me` (left as it was
    /// on rank 0, where there is nothing before it).
    pub fn exscan_in_place<T: Pod, O: Op<T> + ?Sized>(&self, buf: &mut [T], op: &O) -> Result<()> {
        let mine = buf.to_vec();
        self.exscan_slice(&mine, buf, op)
    }

    /// `reduce_scatter_slice` in place: `buf` holds the concatenation of one block per rank
    /// (`counts[i]` items for rank i); afterwards this rank's block (at its offset) holds
    /// the reduced block. The rest of `buf` is left as it was.
    pub fn reduce_scatter_in_place<T: Pod, O: Op<T> + ?Sized>(
        &self,
        buf: &mut [T],
        counts: &[usize],
        op: &O,
    ) -> Result<()> {
        let me = self.rank();
        let at: usize = counts.iter().take(me).sum();
        let mine = buf.to_vec();
        let mut out = vec![T::zeroed(); counts.get(me).copied().unwrap_or(0)];
        self.reduce_scatter_slice(&mine, &mut out, counts, op)?;
        let len = buf.len();
        buf.get_mut(at..at + out.len())
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "reduce_scatter_in_place: a buffer of {len} items for counts {counts:?}"
                ))
            })?
            .copy_from_slice(&out);
        Ok(())
    }

    fn allreduce_seq<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        buf: &mut [T],
        op: &O,
    ) -> Result<()> {
        let n = self.size();
        if n == 1 {
            return Ok(());
        }
        let large = self.core.tuning.allreduce_large;
        // Large all-reductions keep the flat ring (bandwidth-optimal).
        if let (Some(l), true) = (
            self.two_level(),
            op.commutative() && std::mem::size_of_val(buf) < large,
        ) {
            return self.allreduce_two_level(seq, l, buf, op);
        }
        if op.commutative() && std::mem::size_of_val(buf) >= large && buf.len() >= n {
            self.ring_reduce_scatter(seq, buf, op)?;
            return self.ring_allgather_blocks(seq, 512, buf);
        }
        self.allreduce_recursive_doubling(seq, buf, op)
    }

    fn allreduce_recursive_doubling<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        acc: &mut [T],
        op: &O,
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let pof2 = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let rem = n - pof2;
        let mut tmp = vec![T::zeroed(); acc.len()];
        let tag0 = ctag(seq, 0);
        // Fold the first 2*rem ranks pairwise so a power of two remains.
        let newrank = if me < 2 * rem {
            if me % 2 == 0 {
                self.c_send(me + 1, tag0, acc)?;
                None
            } else {
                self.c_recv_into(me - 1, tag0, &mut tmp)?;
                op.combine(&tmp, acc); // tmp is the lower rank
                Some(me / 2)
            }
        } else {
            Some(me - rem)
        };
        if let Some(nr) = newrank {
            let mut mask = 1;
            let mut round = 1;
            while mask < pof2 {
                let np = nr ^ mask;
                let partner = if np < rem { np * 2 + 1 } else { np + rem };
                self.c_exchange(partner, acc, partner, &mut tmp, ctag(seq, round))?;
                if partner < me {
                    op.combine(&tmp, acc);
                } else {
                    op.combine(acc, &mut tmp);
                    acc.copy_from_slice(&tmp);
                }
                mask <<= 1;
                round += 1;
            }
        }
        let tagf = ctag(seq, 1000);
        if me < 2 * rem {
            if me % 2 == 1 {
                self.c_send(me - 1, tagf, acc)?;
            } else {
                self.c_recv_into(me + 1, tagf, acc)?;
            }
        }
        Ok(())
    }

    /// Ring reduce-scatter over `n` nearly equal blocks: afterwards rank r holds the fully
    /// reduced block r (in place in `buf`). Commutative operations only.
    fn ring_reduce_scatter<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        buf: &mut [T],
        op: &O,
    ) -> Result<()> {
        let counts: Vec<usize> = (0..self.size())
            .map(|i| block(buf.len(), self.size(), i).1)
            .collect();
        self.ring_reduce_scatter_counts(seq, buf, &counts, op)
    }

    fn ring_reduce_scatter_counts<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        buf: &mut [T],
        counts: &[usize],
        op: &O,
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let starts = offsets(counts);
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        let maxc = counts.iter().copied().max().unwrap_or(0);
        let mut tmp = vec![T::zeroed(); maxc];
        for step in 0..n - 1 {
            let sb = (me + 2 * n - step - 1) % n;
            let rb = (me + 2 * n - step - 2) % n;
            let tag = ctag(seq, step as u32);
            let s = self.c_isend(next, tag, &buf[starts[sb]..starts[sb] + counts[sb]])?;
            let t = &mut tmp[..counts[rb]];
            self.c_recv_into(prev, tag, t)?;
            s.wait()?;
            op.combine(t, &mut buf[starts[rb]..starts[rb] + counts[rb]]);
        }
        Ok(())
    }

    /// Ring all-gather of the `n` nearly equal blocks of `buf`, rank r owning block r.
    fn ring_allgather_blocks<T: Pod>(&self, seq: u32, round0: u32, buf: &mut [T]) -> Result<()> {
        let n = self.size();
        let counts: Vec<usize> = (0..n).map(|i| block(buf.len(), n, i).1).collect();
        self.ring_allgatherv(seq, round0, buf, &counts)
    }

    // ----- scan ----------------------------------------------------------------------------

    /// Inclusive prefix reduction: rank r gets `x0 ∘ ... ∘ xr` in `recv`.
    pub fn scan_slice<T: Pod, O: Op<T> + ?Sized>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        check_len("scan", recv.len(), send.len())?;
        let (seq, _call) = self.begin("scan_slice", None);
        self.fail_together(seq, self.scan_seq(seq, send, recv, op, false))
    }

    /// Exclusive prefix reduction: rank r > 0 gets `x0 ∘ ... ∘ x(r-1)`; rank 0's `recv` is
    /// left as it was.
    pub fn exscan_slice<T: Pod, O: Op<T> + ?Sized>(
        &self,
        send: &[T],
        recv: &mut [T],
        op: &O,
    ) -> Result<()> {
        check_len("exscan", recv.len(), send.len())?;
        let (seq, _call) = self.begin("exscan_slice", None);
        self.fail_together(seq, self.scan_seq(seq, send, recv, op, true))
    }

    fn scan_seq<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        send: &[T],
        recv: &mut [T],
        op: &O,
        exclusive: bool,
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let mut partial = send.to_vec();
        let mut tmp = vec![T::zeroed(); send.len()];
        if !exclusive {
            recv.copy_from_slice(send);
        }
        let mut have_ex = false;
        let mut mask = 1;
        let mut round = 0;
        while mask < n {
            let tag = ctag(seq, round);
            {
                let s = if me + mask < n {
                    Some(self.c_isend(me + mask, tag, &partial)?)
                } else {
                    None
                };
                if me >= mask {
                    self.c_recv_into(me - mask, tag, &mut tmp)?;
                }
                if let Some(s) = s {
                    s.wait()?;
                }
            }
            if me >= mask {
                // `tmp` covers the ranks just below those in `partial`.
                op.combine(&tmp, &mut partial);
                if exclusive && !have_ex {
                    recv.copy_from_slice(&tmp);
                    have_ex = true;
                } else {
                    op.combine(&tmp, recv);
                }
            }
            mask <<= 1;
            round += 1;
        }
        Ok(())
    }

    // ----- reduce_scatter ------------------------------------------------------------------

    /// Reduce `send` (the concatenation of one block per rank, `counts[i]` items for rank i)
    /// with `op`; rank r receives reduced block r in `recv` (`counts[r]` items).
    pub fn reduce_scatter_slice<T: Pod, O: Op<T> + ?Sized>(
        &self,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: &O,
    ) -> Result<()> {
        let n = self.size();
        if counts.len() != n {
            return Err(Error::InvalidArgument(format!(
                "reduce_scatter: {} counts for {n} ranks",
                counts.len()
            )));
        }
        check_len("reduce_scatter send", send.len(), counts.iter().sum())?;
        check_len("reduce_scatter recv", recv.len(), counts[self.rank()])?;
        let (seq, _call) = self.begin("reduce_scatter_slice", None);
        let r = self.reduce_scatter_seq(seq, send, recv, counts, op);
        self.fail_together(seq, r)
    }

    fn reduce_scatter_seq<T: Pod, O: Op<T> + ?Sized>(
        &self,
        seq: u32,
        send: &[T],
        recv: &mut [T],
        counts: &[usize],
        op: &O,
    ) -> Result<()> {
        let start: usize = counts[..self.rank()].iter().sum();
        if op.commutative() {
            let mut work = send.to_vec();
            self.ring_reduce_scatter_counts(seq, &mut work, counts, op)?;
            recv.copy_from_slice(&work[start..start + counts[self.rank()]]);
            return Ok(());
        }
        let mut full = if self.rank() == 0 {
            vec![T::zeroed(); send.len()]
        } else {
            Vec::new()
        };
        self.reduce_seq(seq, 0, send, &mut full, op)?;
        self.scatterv_seq(
            seq,
            0,
            (self.rank() == 0).then_some((&full[..], counts)),
            recv,
        )
    }

    // ----- gather / scatter ----------------------------------------------------------------

    /// Gather equal-sized `send` blocks into `recv` on `root` (rank order); other ranks'
    /// `recv` is not touched and may be empty.
    pub fn gather_slice<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("gather_slice", Some(root));
        self.fail_together(seq, self.gather_seq(seq, root, send, recv))
    }

    fn gather_seq<T: Pod>(&self, seq: u32, root: usize, send: &[T], recv: &mut [T]) -> Result<()> {
        let tag = ctag(seq, 0);
        let (n, me) = (self.size(), self.rank());
        if me == root {
            check_len("gather", recv.len(), send.len() * n)?;
        }
        if let Some(l) = self.two_level() {
            return self.gather_two_level(seq, l, root, send, recv);
        }
        if me != root {
            return self.c_send(root, tag, send);
        }
        check_len("gather", recv.len(), send.len() * n)?;
        let k = send.len();
        if k == 0 {
            for r in (0..n).filter(|&r| r != me) {
                self.c_recv_into::<T>(r, tag, &mut [])?;
            }
            return Ok(());
        }
        let mut reqs = Vec::with_capacity(n);
        for (r, chunk) in recv.chunks_mut(k).enumerate() {
            if r == me {
                chunk.copy_from_slice(send);
            } else {
                reqs.push(self.c_irecv_exact(r, tag, chunk)?);
            }
        }
        crate::comm::wait_all(reqs)?;
        Ok(())
    }

    pub(crate) fn c_irecv_exact<'a, T: Pod>(
        &'a self,
        src: usize,
        tag: i32,
        buf: &'a mut [T],
    ) -> Result<Request<'a, Status>> {
        let pat = self.pattern(self.coll_ctx(), Source::from(src), tag)?;
        self.irecv_pattern_into(pat, buf)
    }

    /// Gather blocks of any length on `root`: `Some((items, counts))` there, `None` elsewhere.
    pub fn gather_varcount<T: Pod>(
        &self,
        root: usize,
        send: &[T],
    ) -> Result<Option<(Vec<T>, Vec<usize>)>> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("gather_varcount", Some(root));
        self.fail_together(seq, self.gatherv_seq(seq, root, send))
    }

    fn gatherv_seq<T: Pod>(
        &self,
        seq: u32,
        root: usize,
        send: &[T],
    ) -> Result<Option<(Vec<T>, Vec<usize>)>> {
        let tag = ctag(seq, 0);
        let (n, me) = (self.size(), self.rank());
        if me != root {
            self.c_send(root, tag, send)?;
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut counts = Vec::with_capacity(n);
        for r in 0..n {
            if r == me {
                out.extend_from_slice(send);
                counts.push(send.len());
            } else {
                let v = self.c_recv_vec::<T>(r, tag)?;
                counts.push(v.len());
                out.extend_from_slice(&v);
            }
        }
        Ok(Some((out, counts)))
    }

    /// Gather any serde value on `root`: `Some(values in rank order)` there.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let name = format!("rank {}", world.rank());
    /// if let Some(names) = world.gather(0, &name)? {
    ///     assert_eq!(names.len(), world.size()); // on the root only
    /// }
    /// let everyone = world.all_gather(&name)?; // on every rank
    /// assert_eq!(everyone[world.rank()], name);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn gather<T: Serialize + DeserializeOwned>(
        &self,
        root: usize,
        value: &T,
    ) -> Result<Option<Vec<T>>> {
        let bytes = encode_value(value)?;
        let Some((all, counts)) = self.gather_varcount(root, &bytes)? else {
            return Ok(None);
        };
        Ok(Some(self.decode_blocks(&all, &counts)?))
    }

    /// `gather_slice` in place at the root: on `root`, `buf` is the whole result (`size`
    /// blocks) with the root's own block already at its place; elsewhere `buf` is the
    /// rank's block.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let (me, n) = (world.rank(), world.size());
    /// let mut buf = if me == 0 { vec![0u32; 2 * n] } else { vec![me as u32; 2] };
    /// world.gather_in_place(0, &mut buf)?;
    /// if me == 0 {
    ///     assert_eq!(buf, (0..n).flat_map(|r| [r as u32; 2]).collect::<Vec<_>>());
    /// }
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn gather_in_place<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let me = self.rank();
        if me != root {
            return self.gather_slice(root, buf, &mut []);
        }
        let k = self.equal_blocks("gather_in_place", buf.len())?;
        let mine = buf[me * k..(me + 1) * k].to_vec();
        self.gather_slice(root, &mine, buf)
    }

    /// `scatter_slice` in place at the root: on `root`, `buf` holds all `size` blocks and
    /// keeps them (its own block is already where it belongs); elsewhere `buf` receives the
    /// rank's block.
    pub fn scatter_in_place<T: Pod>(&self, root: usize, buf: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let me = self.rank();
        if me != root {
            return self.scatter_slice(root, &[], buf);
        }
        let k = self.equal_blocks("scatter_in_place", buf.len())?;
        let mut own = vec![T::zeroed(); k];
        self.scatter_slice(root, buf, &mut own)
    }

    /// Scatter equal blocks of `send` (significant on `root` only) into every rank's `recv`.
    pub fn scatter_slice<T: Pod>(&self, root: usize, send: &[T], recv: &mut [T]) -> Result<()> {
        self.check_root(root)?;
        let n = self.size();
        if self.rank() == root {
            check_len("scatter", send.len(), recv.len() * n)?;
        }
        let counts = vec![recv.len(); n];
        let (seq, _call) = self.begin("scatter_slice", Some(root));
        let mine = (self.rank() == root).then_some((send, &counts[..]));
        self.fail_together(seq, self.scatterv_seq(seq, root, mine, recv))
    }

    fn scatterv_seq<T: Pod>(
        &self,
        seq: u32,
        root: usize,
        send: Option<(&[T], &[usize])>,
        recv: &mut [T],
    ) -> Result<()> {
        let tag = ctag(seq, 100);
        let (n, me) = (self.size(), self.rank());
        if me != root {
            self.c_recv_into(root, tag, recv)?;
            return Ok(());
        }
        let (data, counts) = send.expect("root has the data");
        let mut reqs = Vec::with_capacity(n);
        let mut pos = 0;
        for (r, &c) in counts.iter().enumerate() {
            let part = &data[pos..pos + c];
            if r == me {
                check_len("scatter recv", recv.len(), c)?;
                recv.copy_from_slice(part);
            } else {
                reqs.push(self.c_isend(r, tag, part)?);
            }
            pos += c;
        }
        crate::comm::wait_all(reqs)?;
        Ok(())
    }

    /// Scatter blocks of any length: on `root`, `send` is `Some((items, counts))` with one
    /// count per rank; every rank gets its block.
    pub fn scatter_varcount<T: Pod>(
        &self,
        root: usize,
        send: Option<(&[T], &[usize])>,
    ) -> Result<Vec<T>> {
        self.check_root(root)?;
        let (seq, _call) = self.begin("scatter_varcount", Some(root));
        self.fail_together(seq, self.scatter_varcount_seq(seq, root, send))
    }

    fn scatter_varcount_seq<T: Pod>(
        &self,
        seq: u32,
        root: usize,
        send: Option<(&[T], &[usize])>,
    ) -> Result<Vec<T>> {
        let tag = ctag(seq, 100);
        let (n, me) = (self.size(), self.rank());
        if me != root {
            return self.c_recv_vec(root, tag);
        }
        let Some((data, counts)) = send else {
            return Err(Error::InvalidArgument(
                "scatter_varcount: the root must pass its data".into(),
            ));
        };
        if counts.len() != n || counts.iter().sum::<usize>() != data.len() {
            return Err(Error::InvalidArgument(format!(
                "scatter_varcount: {} counts summing to {} for {n} ranks and {} items",
                counts.len(),
                counts.iter().sum::<usize>(),
                data.len()
            )));
        }
        let mut mine = Vec::new();
        let mut reqs = Vec::new();
        let mut pos = 0;
        for (r, &c) in counts.iter().enumerate() {
            if r == me {
                mine = data[pos..pos + c].to_vec();
            } else {
                reqs.push(self.c_isend(r, tag, &data[pos..pos + c])?);
            }
            pos += c;
        }
        crate::comm::wait_all(reqs)?;
        Ok(mine)
    }

    /// Scatter one serde value to each rank from `root` (`Some(values)` there, one per rank).
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let work = (world.rank() == 0).then(|| (0..world.size()).map(|r| vec![r; 2]).collect());
    /// let mine: Vec<usize> = world.scatter(0, work)?;
    /// assert_eq!(mine, [world.rank(); 2]);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn scatter<T: Serialize + DeserializeOwned>(
        &self,
        root: usize,
        values: Option<Vec<T>>,
    ) -> Result<T> {
        self.check_root(root)?;
        let n = self.size();
        let (bytes, counts) = if self.rank() == root {
            let values = values.ok_or_else(|| {
                Error::InvalidArgument("scatter: the root must pass the values".into())
            })?;
            if values.len() != n {
                return Err(Error::InvalidArgument(format!(
                    "scatter: {} values for {n} ranks",
                    values.len()
                )));
            }
            encode_blocks(&values)?
        } else {
            (Vec::new(), Vec::new())
        };
        let send = (self.rank() == root).then_some((&bytes[..], &counts[..]));
        let mine = self.scatter_varcount(root, send)?;
        self.decode_bytes(&mine, root)
    }

    // ----- all_gather ----------------------------------------------------------------------

    /// Every rank's equal-sized `send` block, in rank order, into every rank's `recv`.
    pub fn all_gather_slice<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        check_len("all_gather", recv.len(), send.len() * n)?;
        let k = send.len();
        recv[me * k..(me + 1) * k].copy_from_slice(send);
        let counts = vec![k; n];
        let (seq, _call) = self.begin("all_gather_slice", None);
        let r = match self.two_level() {
            Some(l) => self.allgather_two_level(seq, l, send, recv),
            None => self.ring_allgatherv(seq, 0, recv, &counts),
        };
        self.fail_together(seq, r)
    }

    /// `all_gather_slice` in place: `buf` holds `size` equal blocks with this rank's own
    /// block at its place; afterwards every block is filled.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let (me, n) = (world.rank(), world.size());
    /// let mut buf = vec![0u64; n];
    /// buf[me] = me as u64 * 10;
    /// world.all_gather_in_place(&mut buf)?;
    /// assert_eq!(buf, (0..n as u64).map(|r| r * 10).collect::<Vec<_>>());
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn all_gather_in_place<T: Pod>(&self, buf: &mut [T]) -> Result<()> {
        let me = self.rank();
        let k = self.equal_blocks("all_gather_in_place", buf.len())?;
        let mine = buf[me * k..(me + 1) * k].to_vec();
        self.all_gather_slice(&mine, buf)
    }

    /// Ring all-gather of blocks laid end to end (`counts[r]` items from rank r, already in
    /// place on r); tags start at round `round0` of collective `seq`.
    fn ring_allgatherv<T: Pod>(
        &self,
        seq: u32,
        round0: u32,
        buf: &mut [T],
        counts: &[usize],
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let starts = offsets(counts);
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        for step in 0..n.saturating_sub(1) {
            let sb = (me + n - step) % n;
            let rb = (me + 2 * n - step - 1) % n;
            let (src, dst) = split_pair(
                buf,
                starts[sb]..starts[sb] + counts[sb],
                starts[rb]..starts[rb] + counts[rb],
            );
            self.c_exchange(next, src, prev, dst, ctag(seq, round0 + step as u32))?;
        }
        Ok(())
    }

    /// Every rank's block of any length, in rank order, to every rank: `(items, counts)`.
    pub fn all_gather_varcount<T: Pod>(&self, send: &[T]) -> Result<(Vec<T>, Vec<usize>)> {
        let n = self.size();
        let mut counts64 = vec![0u64; n];
        self.all_gather_slice(&[send.len() as u64], &mut counts64)?;
        let counts: Vec<usize> = counts64.iter().map(|&c| c as usize).collect();
        let total = counts.iter().sum();
        let mut out = vec![T::zeroed(); total];
        let start: usize = counts[..self.rank()].iter().sum();
        out[start..start + send.len()].copy_from_slice(send);
        let (seq, _call) = self.begin("all_gather_varcount", None);
        self.fail_together(seq, self.ring_allgatherv(seq, 0, &mut out, &counts))?;
        Ok((out, counts))
    }

    /// Every rank's serde value, in rank order, to every rank.
    pub fn all_gather<T: Serialize + DeserializeOwned>(&self, value: &T) -> Result<Vec<T>> {
        let (all, counts) = self.all_gather_varcount(&encode_value(value)?)?;
        self.decode_blocks(&all, &counts)
    }

    // ----- all_to_all ----------------------------------------------------------------------

    /// `all_to_all_slice` in place: block j of `buf` goes to rank j, and is replaced by
    /// rank j's block for this rank.
    pub fn all_to_all_in_place<T: Pod>(&self, buf: &mut [T]) -> Result<()> {
        let send = buf.to_vec();
        self.all_to_all_slice(&send, buf)
    }

    /// Rank r sends block j of `send` to rank j and receives rank j's block r into block j
    /// of `recv` (equal block sizes).
    pub fn all_to_all_slice<T: Pod>(&self, send: &[T], recv: &mut [T]) -> Result<()> {
        let n = self.size();
        if !send.len().is_multiple_of(n) {
            return Err(Error::InvalidArgument(format!(
                "all_to_all: {} items do not split into {n} equal blocks",
                send.len()
            )));
        }
        check_len("all_to_all", recv.len(), send.len())?;
        let k = send.len() / n;
        let counts = vec![k; n];
        let (seq, _call) = self.begin("all_to_all_slice", None);
        self.fail_together(seq, self.alltoallv_seq(seq, send, &counts, recv, &counts))
    }

    fn alltoallv_seq<T: Pod>(
        &self,
        seq: u32,
        send: &[T],
        scounts: &[usize],
        recv: &mut [T],
        rcounts: &[usize],
    ) -> Result<()> {
        let (n, me) = (self.size(), self.rank());
        let (ss, rs) = (offsets(scounts), offsets(rcounts));
        recv[rs[me]..rs[me] + rcounts[me]].copy_from_slice(&send[ss[me]..ss[me] + scounts[me]]);
        for step in 1..n {
            let dst = (me + step) % n;
            let src = (me + n - step) % n;
            let tag = ctag(seq, step as u32);
            self.c_exchange(
                dst,
                &send[ss[dst]..ss[dst] + scounts[dst]],
                src,
                &mut recv[rs[src]..rs[src] + rcounts[src]],
                tag,
            )?;
        }
        Ok(())
    }

    /// All-to-all with blocks of any length: `send_counts[j]` items of `send` go to rank j.
    /// Returns the received items (rank order) and how many came from each rank.
    pub fn all_to_all_varcount<T: Pod>(
        &self,
        send: &[T],
        send_counts: &[usize],
    ) -> Result<(Vec<T>, Vec<usize>)> {
        let n = self.size();
        if send_counts.len() != n || send_counts.iter().sum::<usize>() != send.len() {
            return Err(Error::InvalidArgument(format!(
                "all_to_all_varcount: {} counts summing to {} for {n} ranks and {} items",
                send_counts.len(),
                send_counts.iter().sum::<usize>(),
                send.len()
            )));
        }
        let sc: Vec<u64> = send_counts.iter().map(|&c| c as u64).collect();
        let mut rc = vec![0u64; n];
        self.all_to_all_slice(&sc, &mut rc)?;
        let rcounts: Vec<usize> = rc.iter().map(|&c| c as usize).collect();
        let mut out = vec![T::zeroed(); rcounts.iter().sum()];
        let (seq, _call) = self.begin("all_to_all_varcount", None);
        let r = self.alltoallv_seq(seq, send, send_counts, &mut out, &rcounts);
        self.fail_together(seq, r)?;
        Ok((out, rcounts))
    }

    /// All-to-all of serde values: `values[j]` goes to rank j; returns one value per rank.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// // values[j] goes to rank j.
    /// let out: Vec<(usize, usize)> = (0..world.size()).map(|j| (me, j)).collect();
    /// let got = world.all_to_all(out)?;
    /// assert!(got.iter().enumerate().all(|(i, &(from, to))| from == i && to == me));
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn all_to_all<T: Serialize + DeserializeOwned>(&self, values: Vec<T>) -> Result<Vec<T>> {
        let n = self.size();
        if values.len() != n {
            return Err(Error::InvalidArgument(format!(
                "all_to_all: {} values for {n} ranks",
                values.len()
            )));
        }
        let (bytes, counts) = encode_blocks(&values)?;
        let (all, rcounts) = self.all_to_all_varcount(&bytes, &counts)?;
        self.decode_blocks(&all, &rcounts)
    }

    // ----- min/max with location -----------------------------------------------------------

    /// Element-wise minimum over all ranks, with the lowest rank holding it.
    pub fn all_reduce_min_loc<T: Number>(&self, values: &[T]) -> Result<Vec<(T, usize)>> {
        self.extreme_loc(values, crate::op::Extreme::Min)
    }

    /// Element-wise maximum over all ranks, with the lowest rank holding it.
    pub fn all_reduce_max_loc<T: Number>(&self, values: &[T]) -> Result<Vec<(T, usize)>> {
        self.extreme_loc(values, crate::op::Extreme::Max)
    }

    fn extreme_loc<T: Number>(
        &self,
        values: &[T],
        which: crate::op::Extreme,
    ) -> Result<Vec<(T, usize)>> {
        let mut best = vec![T::zeroed(); values.len()];
        match which {
            crate::op::Extreme::Min => self.all_reduce_slice(values, &mut best, &crate::op::Min)?,
            crate::op::Extreme::Max => self.all_reduce_slice(values, &mut best, &crate::op::Max)?,
        }
        let mine: Vec<u64> = values
            .iter()
            .zip(&best)
            .map(|(v, b)| if v == b { self.rank() as u64 } else { u64::MAX })
            .collect();
        let mut loc = vec![0u64; values.len()];
        self.all_reduce_slice(&mine, &mut loc, &crate::op::Min)?;
        Ok(best
            .into_iter()
            .zip(loc)
            .map(|(b, l)| (b, l as usize))
            .collect())
    }
}
