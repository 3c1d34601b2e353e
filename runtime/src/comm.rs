//! Communicators: ranked groups of processes with typed point-to-point messaging.

use std::any::type_name;
use std::sync::Arc;

use bytemuck::Pod;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::{Core, Watch};
use crate::protocol::matching::{Msg, Pattern, ANY_SOURCE, ANY_TAG};
use crate::protocol::Want;
pub use crate::request::{test_all, test_any, test_some, wait_all, wait_any, wait_some, Request};
use crate::wire::{Encoding, HEADER_LEN};

/// Largest user tag (tags are `0..=MAX_TAG`).
pub const MAX_TAG: i32 = i32::MAX;

/// Who a receive accepts messages from: a rank, or [`ANY_SOURCE`].
///
/// ```
/// use ranks::ANY_SOURCE;
/// let world = ranks::init()?;
/// world.send(world.rank(), 3, &"to myself")?;
/// // From anyone, with tag 3; the status says who it was.
/// let (text, status) = world.recv::<String>(ANY_SOURCE, 3)?;
/// assert_eq!((text.as_str(), status.source), ("to myself", world.rank()));
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source(i32);

impl From<i32> for Source {
    fn from(v: i32) -> Self {
        Source(v)
    }
}
impl From<usize> for Source {
    fn from(v: usize) -> Self {
        Source(i32::try_from(v).unwrap_or(i32::MAX))
    }
}
impl From<u32> for Source {
    fn from(v: u32) -> Self {
        Source(i32::try_from(v).unwrap_or(i32::MAX))
    }
}

/// What arrived: who sent it, with which tag, and how many payload bytes.
///
/// ```
/// let world = ranks::init()?;
/// world.send_slice(world.rank(), 1, &[1.5f64, 2.5, 3.5])?;
/// let status = world.probe(world.rank(), 1)?; // what is there, without taking it
/// assert_eq!((status.tag, status.len, status.count::<f64>()), (1, 24, 3));
/// let (values, _) = world.recv_vec::<f64>(status.source, status.tag)?;
/// assert_eq!(values, [1.5, 2.5, 3.5]);
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Rank of the sender in this communicator.
    pub source: usize,
    /// The message's tag.
    pub tag: i32,
    /// Payload size in bytes (for slices: elements times element size).
    pub len: usize,
}

impl Status {
    /// Number of `T` elements in a raw-slice message.
    pub fn count<T: Pod>(&self) -> usize {
        self.len / std::mem::size_of::<T>().max(1)
    }
}

/// A communicator: a group of ranks and a private message space. Cloning one is cheap
/// (one reference count): clones are the same communicator.
///
/// ```
/// let world = ranks::init()?;
/// let (me, n) = (world.rank(), world.size());
/// // A ring: each rank sends its rank to the next and receives from the previous.
/// let from_prev = world.irecv::<usize>((me + n - 1) % n, 0)?;
/// world.send((me + 1) % n, 0, &me)?;
/// let (got, status) = from_prev.wait()?;
/// assert_eq!((got, status.source), ((me + n - 1) % n, (me + n - 1) % n));
/// // A collective: every rank of the communicator calls it.
/// let mut total = [0u64];
/// world.all_reduce_slice(&[me as u64 + 1], &mut total, &ranks::op::Sum)?;
/// assert_eq!(total[0], (n * (n + 1) / 2) as u64);
/// # Ok::<(), ranks::Error>(())
/// ```
#[derive(Clone)]
pub struct Comm(Arc<CommData>);

/// What a communicator is (behind [`Comm`]'s one `Arc`).
#[doc(hidden)]
pub struct CommData {
    pub(crate) core: Arc<Core>,
    /// Context id of point-to-point traffic; collectives use `ctx + 1`.
    pub(crate) ctx: u32,
    pub(crate) rank: usize,
    /// World rank of each member.
    pub(crate) members: Arc<[usize]>,
    /// Sequence number of the next collective call (the same on every member, since all
    /// members call collectives in the same order); it keeps concurrent collectives apart.
    pub(crate) coll_seq: Arc<std::sync::atomic::AtomicU32>,
    /// Number of shared objects (queues, locks, ...) created on this communicator so far;
    /// like `coll_seq` it advances identically on every member.
    pub(crate) obj_seq: Arc<std::sync::atomic::AtomicU32>,
    /// How the members sit on hosts, for two-level collectives (decided on first use).
    pub(crate) layout: std::sync::OnceLock<Option<crate::hier::Layout>>,
    /// Agreed by the members when they made it, above any they had before (the world: 0);
    /// see `crate::host_sync`.
    pub(crate) epoch: u32,
    /// Where barriers meet in shared memory, if they do (decided on first use).
    pub(crate) host_slot: std::sync::OnceLock<Option<usize>>,
    /// All-reductions that may meet in shared memory so far (the same on every member;
    /// `Comm::next_all_reduce`), and the mark of the last that did (0: none).
    pub(crate) host_ops: std::sync::atomic::AtomicU32,
    pub(crate) host_last: std::sync::atomic::AtomicU32,
    /// The name and attributes the program gave this communicator (see `set_name`).
    pub(crate) labels: crate::group::Labels,
}

impl std::ops::Deref for Comm {
    type Target = CommData;
    fn deref(&self) -> &CommData {
        &self.0
    }
}

impl Comm {
    pub(crate) fn new(data: CommData) -> Comm {
        Comm(Arc::new(data))
    }

    /// The world's communicator in context `ctx` (for the runtime's own traffic).
    pub(crate) fn world_in(core: Arc<Core>, ctx: u32) -> Comm {
        let members: Arc<[usize]> = (0..core.size).collect();
        Comm::new(CommData {
            rank: core.rank,
            core,
            ctx,
            members,
            coll_seq: Default::default(),
            obj_seq: Default::default(),
            layout: Default::default(),
            epoch: 0,
            host_slot: Default::default(),
            host_ops: Default::default(),
            host_last: Default::default(),
            labels: Default::default(),
        })
    }
}

pub(crate) fn typecode<T>() -> u32 {
    // FNV-1a of the type's name: cheap, stable for the primitive types slices are made of.
    let mut h: u32 = 0x811c_9dc5;
    for b in type_name::<T>().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h | 1
}

impl Comm {
    pub(crate) fn world(core: Arc<Core>) -> Comm {
        Comm::world_in(core, 0)
    }

    /// This process's rank in the communicator, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks in the communicator.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Name of the transport in use (`shm`, `uds`, or `local` for a world of one).
    pub fn transport(&self) -> &'static str {
        self.core.t.name()
    }

    /// How this process's shared pulls went so far (for tests and benchmarks): halves it
    /// offered senders that they wrote, halves it took back (or they could not write) and
    /// pulled itself, halves it wrote for its receivers.
    #[doc(hidden)]
    pub fn shared_pulls(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.core.shares;
        (
            s.written_by_peer.load(Relaxed),
            s.pulled_back.load(Relaxed),
            s.written_for_peer.load(Relaxed),
        )
    }

    /// How many of this process's posted receives took their message straight from the
    /// sender's stream into their buffer (for tests of that path).
    #[doc(hidden)]
    pub fn landed_receives(&self) -> u64 {
        self.core.lock().landed
    }

    /// How many rendezvous messages progress pulled into a buffer of its own, to be
    /// copied again into their receive's buffer (for tests of who pulls).
    #[doc(hidden)]
    pub fn staged_pulls(&self) -> u64 {
        self.core.lock().staged_pulls
    }

    /// How many looks that do not wait (`test`, `iprobe`, ...) found nothing and gave the
    /// core away because this host's ranks outnumber its cores (for tests of that).
    #[doc(hidden)]
    pub fn idle_yields(&self) -> u64 {
        self.core
            .idle_yields
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// End the whole job with `code` (1 if `code` is 0): the launcher stops every other
    /// rank, even with `--keep-going`, and exits with this code whatever the others do.
    /// Under `srun` without the launcher, Slurm ends the whole step (PMI-2 abort).
    pub fn abort(&self, code: i32) -> ! {
        let code = if code & 0xff == 0 { 1 } else { code & 0xff };
        // The launcher recognises this exact line on the rank's stderr.
        let line = crate::config::abort_line(self.core.rank, code);
        eprintln!("{line}");
        // Started by srun, no launcher reads that line: Slurm ends the step.
        crate::bootstrap::abort_step(&line);
        std::process::exit(code)
    }

    pub(crate) fn peer(&self, dest: usize) -> Result<usize> {
        self.members
            .get(dest)
            .copied()
            .ok_or_else(|| Error::InvalidRank {
                rank: dest as i64,
                size: self.size(),
            })
    }

    pub(crate) fn check_send_tag(tag: i32) -> Result<()> {
        if tag < 0 {
            return Err(Error::InvalidTag(tag));
        }
        Ok(())
    }

    pub(crate) fn pattern(&self, ctx: u32, source: Source, tag: i32) -> Result<Pattern> {
        let Source(src) = source;
        if src != ANY_SOURCE && (src < 0 || src as usize >= self.size()) {
            return Err(Error::InvalidRank {
                rank: i64::from(src),
                size: self.size(),
            });
        }
        if tag < 0 && tag != ANY_TAG {
            return Err(Error::InvalidTag(tag));
        }
        Ok(Pattern { ctx, src, tag })
    }

    /// What ends a wait for a message matching `pat` when ranks die.
    pub(crate) fn watch_for(&self, pat: &Pattern) -> Watch<'_> {
        if pat.src == ANY_SOURCE {
            return Watch::All(&self.members);
        }
        let peer = self.members[pat.src as usize];
        if pat.tag == ANY_TAG {
            return self.watch_peer(pat.ctx, peer);
        }
        self.watch_step(pat.ctx, peer, pat.tag)
    }

    /// What ends a wait on world rank `peer` for traffic with `tag` in context `ctx` (a
    /// receive from it, or a send it has not taken): as `watch_peer`, and in the collective
    /// context also another member's notice that it failed in the collective the tag is
    /// of (see `Comm::fail_together`).
    pub(crate) fn watch_step(&self, ctx: u32, peer: usize, tag: i32) -> Watch<'_> {
        if ctx == self.coll_ctx() {
            let seq = crate::collectives::seq_of(tag);
            return Watch::Step {
                peer,
                members: &self.members,
                abort: Some(crate::collectives::notice_pattern(ctx, seq)),
            };
        }
        self.watch_peer(ctx, peer)
    }

    /// What ends a wait on world rank `peer` for traffic in context `ctx`: its loss, and in
    /// this communicator's collective context also the failure of any member.
    pub(crate) fn watch_peer(&self, ctx: u32, peer: usize) -> Watch<'_> {
        if ctx == self.coll_ctx() {
            Watch::Step {
                peer,
                members: &self.members,
                abort: None,
            }
        } else {
            Watch::Peer(peer)
        }
    }

    // ----- sending -------------------------------------------------------------------------

    /// Send a serde value to `dest` with `tag`.
    ///
    /// Returns once the message is on its way; like MPI's standard mode, a large message may
    /// wait until the receiver takes it.
    ///
    /// ```
    /// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    /// struct Particle { id: u32, pos: [f64; 3] }
    ///
    /// let world = ranks::init()?;
    /// let next = (world.rank() + 1) % world.size();
    /// let prev = (world.rank() + world.size() - 1) % world.size();
    /// let p = Particle { id: world.rank() as u32, pos: [0.0, 1.0, 2.0] };
    /// let incoming = world.irecv::<Particle>(prev, 0)?;
    /// world.send(next, 0, &p)?;
    /// let (q, _) = incoming.wait()?;
    /// assert_eq!(q.id as usize, prev);
    /// // Received as another type, the message is refused, not misread, and stays queued.
    /// world.send(world.rank(), 1, &-1i32)?;
    /// assert!(matches!(world.recv::<u32>(world.rank(), 1), Err(ranks::Error::TypeMismatch { .. })));
    /// assert_eq!(world.recv::<i32>(world.rank(), 1)?.0, -1);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, dest: usize, tag: i32, value: &T) -> Result<()> {
        self.send_value(dest, tag, value, false)
    }

    /// `send` or `ssend` (`sync`) of a serde value.
    fn send_value<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
        sync: bool,
    ) -> Result<()> {
        let enc = (Encoding::Serde, crate::fingerprint::of::<T>());
        self.send_bytes_as(self.ctx, dest, tag, &encode(value)?, enc, sync)
    }

    /// `send_slice` or `ssend_slice` (`sync`).
    fn send_pod<T: Pod>(&self, dest: usize, tag: i32, data: &[T], sync: bool) -> Result<()> {
        let enc = (Encoding::Raw, typecode::<T>());
        self.send_bytes_as(self.ctx, dest, tag, bytemuck::cast_slice(data), enc, sync)
    }

    /// `isend` or `issend` (`sync`): the value is encoded before this returns.
    fn isend_value<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
        sync: bool,
    ) -> Result<Request<'static, ()>> {
        let mut buf = vec![0u8; HEADER_LEN];
        buf = postcard::to_extend(value, buf).map_err(|e| Error::Encode(e.to_string()))?;
        let enc = (Encoding::Serde, crate::fingerprint::of::<T>());
        self.isend_owned(self.ctx, dest, tag, buf, enc, sync)
    }

    /// `isend_slice` or `issend_slice` (`sync`).
    #[inline(always)]
    fn isend_pod<'a, T: Pod>(
        &'a self,
        dest: usize,
        tag: i32,
        data: &'a [T],
        sync: bool,
    ) -> Result<Request<'a, ()>> {
        let enc = (Encoding::Raw, typecode::<T>());
        self.isend_borrowed(self.ctx, dest, tag, bytemuck::cast_slice(data), enc, sync)
    }

    /// Synchronous send (MPI's `ssend`): like [`Comm::send`], but it returns only once the
    /// receiver has matched the message with a receive, whatever its size (a plain send of
    /// a small message returns as soon as the bytes are on their way). A send to this rank
    /// itself returns at once, as a plain send does.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// let r = world.irecv::<String>(me, 4)?;
    /// world.ssend(me, 4, "matched")?;
    /// assert_eq!(r.wait()?.0, "matched");
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn ssend<T: Serialize + ?Sized>(&self, dest: usize, tag: i32, value: &T) -> Result<()> {
        self.send_value(dest, tag, value, true)
    }

    /// Synchronous send of a slice of plain numbers: [`Comm::send_slice`] that returns only
    /// once the receiver has matched it (see [`Comm::ssend`]).
    pub fn ssend_slice<T: Pod>(&self, dest: usize, tag: i32, data: &[T]) -> Result<()> {
        self.send_pod(dest, tag, data, true)
    }

    /// Nonblocking synchronous send (MPI's `issend`): the request completes only once the
    /// receiver has matched the message. It borrows `data` until then.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// let data = [7u64; 4];
    /// let s = world.issend_slice(me, 5, &data)?;
    /// assert_eq!(world.recv_vec::<u64>(me, 5)?.0, data);
    /// s.wait()?;
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn issend_slice<'a, T: Pod>(
        &'a self,
        dest: usize,
        tag: i32,
        data: &'a [T],
    ) -> Result<Request<'a, ()>> {
        self.isend_pod(dest, tag, data, true)
    }

    /// Nonblocking synchronous send of a serde value (see [`Comm::issend_slice`]).
    pub fn issend<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
    ) -> Result<Request<'static, ()>> {
        self.isend_value(dest, tag, value, true)
    }

    /// Send a slice of plain numbers (no serde, no copy into an intermediate buffer).
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// world.send_slice(me, 0, &[1u32, 2, 3])?;
    /// let mut buf = [0u32; 3];
    /// let status = world.recv_into(me, 0, &mut buf)?; // into a buffer of your own
    /// assert_eq!((buf, status.count::<u32>()), ([1, 2, 3], 3));
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn send_slice<T: Pod>(&self, dest: usize, tag: i32, data: &[T]) -> Result<()> {
        self.send_pod(dest, tag, data, false)
    }

    /// Nonblocking send of a serde value; the value is encoded before this returns.
    pub fn isend<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
    ) -> Result<Request<'static, ()>> {
        self.isend_value(dest, tag, value, false)
    }

    /// Nonblocking send of a slice of plain numbers, without copying it: the request
    /// borrows `data` until it completes (dropping it unfinished waits for completion).
    /// As with MPI, the buffer must outlive the transfer: leaking the request with
    /// `mem::forget` and freeing the buffer lets a receiver that pulls a large message read
    /// whatever the memory then holds (no memory unsafety here; wrong data there).
    #[inline(always)]
    pub fn isend_slice<'a, T: Pod>(
        &'a self,
        dest: usize,
        tag: i32,
        data: &'a [T],
    ) -> Result<Request<'a, ()>> {
        self.isend_pod(dest, tag, data, false)
    }

    // ----- receiving -----------------------------------------------------------------------

    /// Receive a serde value from `source` (or [`ANY_SOURCE`]) with `tag` (or [`ANY_TAG`]).
    pub fn recv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(T, Status)> {
        let t = self.recv_taken(self.pattern(self.ctx, source.into(), tag)?, true)?;
        self.decode(t)
    }

    /// Receive a slice of plain numbers into a new vector.
    pub fn recv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(Vec<T>, Status)> {
        self.recv_vec_pat(self.pattern(self.ctx, source.into(), tag)?)
    }

    /// Receive a slice of plain numbers into `buf`; the message may be shorter than `buf`
    /// (see `Status::count`), not longer.
    pub fn recv_into<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
        buf: &mut [T],
    ) -> Result<Status> {
        self.recv_into_pat(self.pattern(self.ctx, source.into(), tag)?, buf)
    }

    /// Nonblocking receive of a serde value.
    pub fn irecv<T: DeserializeOwned>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<Request<'static, (T, Status)>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        let st = crate::request::ReqState::posted(self.post(pat, Want::Bytes), pat);
        Ok(Request::new(self.clone(), st, |c, m, _, _| {
            c.decode(m.take().expect("receive"))
        }))
    }

    /// Nonblocking receive of a slice of plain numbers.
    pub fn irecv_vec<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<Request<'static, (Vec<T>, Status)>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        let st = crate::request::ReqState::posted(self.post(pat, Want::Bytes), pat);
        Ok(Request::new(self.clone(), st, |c, m, _, _| {
            c.decode_vec(m.take().expect("receive"))
        }))
    }

    /// Nonblocking receive of a slice of plain numbers into `buf`, which the request
    /// borrows until it completes.
    #[inline(always)]
    pub fn irecv_into<'a, T: Pod>(
        &'a self,
        source: impl Into<Source>,
        tag: i32,
        buf: &'a mut [T],
    ) -> Result<Request<'a, Status>> {
        self.irecv_pattern_into(self.pattern(self.ctx, source.into(), tag)?, buf)
    }

    /// Send `value` to `dest` and receive from `source` at the same time (no deadlock when
    /// two ranks exchange).
    pub fn sendrecv<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &S,
        dest: usize,
        send_tag: i32,
        source: impl Into<Source>,
        recv_tag: i32,
    ) -> Result<(R, Status)> {
        let rreq = self.irecv::<R>(source, recv_tag)?;
        let sreq = self.isend(dest, send_tag, value)?;
        let got = rreq.wait()?;
        sreq.wait()?;
        Ok(got)
    }

    /// Send `buf` to `dest` and replace it with what comes from `source` (MPI's
    /// `Sendrecv_replace`). A longer message than `buf` is `Error::Truncated` (it stays
    /// queued, `buf` keeps what it held); a shorter one fills the front of `buf` (the
    /// status gives its length).
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let (me, n) = (world.rank(), world.size());
    /// // Shift a block around the ring.
    /// let mut block = [me as u32; 4];
    /// world.sendrecv_replace(&mut block, (me + 1) % n, 0, (me + n - 1) % n, 0)?;
    /// assert_eq!(block, [((me + n - 1) % n) as u32; 4]);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn sendrecv_replace<T: Pod>(
        &self,
        buf: &mut [T],
        dest: usize,
        send_tag: i32,
        source: impl Into<Source>,
        recv_tag: i32,
    ) -> Result<Status> {
        let out = buf.to_vec();
        let mut got = vec![T::zeroed(); buf.len()];
        let sreq = self.isend_slice(dest, send_tag, &out)?;
        let st = self.recv_into(source, recv_tag, &mut got)?;
        sreq.wait()?;
        let n = (st.len / std::mem::size_of::<T>().max(1)).min(buf.len());
        buf[..n].copy_from_slice(&got[..n]);
        Ok(st)
    }

    /// Wait for a message matching `source`/`tag` without receiving it.
    pub fn probe(&self, source: impl Into<Source>, tag: i32) -> Result<Status> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        let _doing = self.doing("probe", &pat);
        let _trace = self.trace_pat("probe", &pat);
        self.core.wait_for(self.watch_for(&pat), |_, st| {
            Ok(st.proto.peek(pat).map(status_of))
        })
    }

    /// A persistent send (MPI's `Send_init`): the destination, tag and buffer fixed once,
    /// then [`PersistentSend::start`] as often as wanted, each start a nonblocking send of
    /// the buffer (borrowed for as long as the persistent send lives).
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// let data = [1u32, 2, 3];
    /// let send = world.send_init(me, 8, &data)?;
    /// let recv = world.recv_init::<u32>(me, 8)?;
    /// for _ in 0..3 {
    ///     let r = recv.start()?;
    ///     send.start()?.wait()?;
    ///     assert_eq!(r.wait()?.0, data);
    /// }
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn send_init<'a, T: Pod>(
        &self,
        dest: usize,
        tag: i32,
        data: &'a [T],
    ) -> Result<PersistentSend<'a, T>> {
        self.peer(dest)?;
        Self::check_send_tag(tag)?;
        Ok(PersistentSend {
            comm: self.clone(),
            dest,
            tag,
            data,
        })
    }

    /// A persistent receive of plain numbers (MPI's `Recv_init`): each
    /// [`PersistentRecv::start`] posts a nonblocking receive from `source` with `tag`.
    pub fn recv_init<T: Pod>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<PersistentRecv<T>> {
        let source = source.into();
        self.pattern(self.ctx, source, tag)?; // checks the rank and tag now
        Ok(PersistentRecv {
            comm: self.clone(),
            source,
            tag,
            _t: std::marker::PhantomData,
        })
    }

    /// Matched probe (MPI's `Mprobe`): wait for a message matching `source`/`tag` and take
    /// it out of matching, so no other receive (another thread's, say) can get it; then
    /// receive it with [`Message::recv`], [`Message::recv_vec`] or [`Message::recv_into`].
    /// Probing and then receiving in two steps, by contrast, races with other threads.
    ///
    /// ```
    /// let world = ranks::init()?;
    /// let me = world.rank();
    /// world.send_slice(me, 4, &[1.5f64, 2.5])?;
    /// let m = world.mprobe(me, 4)?;
    /// let n = m.status().count::<f64>();
    /// let mut buf = vec![0.0; n]; // sized from the probe, and nobody else can take it
    /// m.recv_into(&mut buf)?;
    /// assert_eq!(buf, [1.5, 2.5]);
    /// # Ok::<(), ranks::Error>(())
    /// ```
    pub fn mprobe(&self, source: impl Into<Source>, tag: i32) -> Result<Message> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        let t = self.recv_taken(pat, true)?;
        Ok(Message::new(self, t))
    }

    /// Matched probe without waiting (MPI's `Improbe`): `None` when nothing matching is here.
    pub fn improbe(&self, source: impl Into<Source>, tag: i32) -> Result<Option<Message>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        Ok(self.try_take(pat).map(|t| Message::new(self, t)))
    }

    /// Like `probe`, but returns `None` at once when nothing matching has arrived.
    pub fn iprobe(&self, source: impl Into<Source>, tag: i32) -> Result<Option<Status>> {
        let pat = self.pattern(self.ctx, source.into(), tag)?;
        self.iprobe_pat(pat)
    }

    /// `iprobe` in another context, by world rank (for primitives in their own contexts).
    pub(crate) fn iprobe_ctx(&self, ctx: u32, source: usize, tag: i32) -> Result<Option<Status>> {
        self.iprobe_pat(self.pattern(ctx, Source::from(source), tag)?)
    }

    // ----- turning messages into values ----------------------------------------------------

    // ----- async -----------------------------------------------------------------------------

    /// Receive from an async task (tokio): the wait runs on a blocking thread.
    #[cfg(feature = "tokio")]
    pub async fn recv_async<T: DeserializeOwned + Send + 'static>(
        &self,
        source: impl Into<Source>,
        tag: i32,
    ) -> Result<(T, Status)> {
        self.irecv::<T>(source, tag)?.wait_async().await
    }

    /// Send from an async task (tokio).
    #[cfg(feature = "tokio")]
    pub async fn send_async<T: Serialize + ?Sized>(
        &self,
        dest: usize,
        tag: i32,
        value: &T,
    ) -> Result<()> {
        self.isend(dest, tag, value)?.wait_async().await
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(|e| Error::Encode(e.to_string()))
}

pub(crate) fn status_of(m: &Msg) -> Status {
    Status {
        source: m.src as usize,
        tag: m.tag,
        len: m.len() as usize,
    }
}

/// A message taken out of matching by [`Comm::mprobe`] or [`Comm::improbe`]: only this
/// handle can receive it. Dropping it unreceived puts the message back in its place; a
/// receive that fails on the message (a type mismatch, a buffer too small) puts it back too,
/// so nothing is lost.
#[must_use = "a matched message is received through this handle (dropping it puts it back)"]
pub struct Message {
    comm: Comm,
    taken: Option<crate::protocol::Taken>,
    status: Status,
}

impl Message {
    fn new(comm: &Comm, t: crate::protocol::Taken) -> Message {
        Message {
            comm: comm.clone(),
            status: status_of(t.msg()),
            taken: Some(t),
        }
    }

    /// Source, tag and length of the message.
    pub fn status(&self) -> &Status {
        &self.status
    }

    fn take(&mut self) -> crate::protocol::Taken {
        self.taken.take().expect("a message is received once")
    }

    /// Receive it as a serde value (MPI's `Mrecv`).
    pub fn recv<T: DeserializeOwned>(mut self) -> Result<(T, Status)> {
        let t = self.take();
        self.comm.decode(t)
    }

    /// Receive it as a slice of plain numbers, into a new vector.
    pub fn recv_vec<T: Pod>(mut self) -> Result<(Vec<T>, Status)> {
        let t = self.take();
        self.comm.decode_vec(t)
    }

    /// Receive it as plain numbers into `buf` (which may be longer, not shorter).
    pub fn recv_into<T: Pod>(mut self, buf: &mut [T]) -> Result<Status> {
        let t = self.take();
        self.comm.decode_into(t, buf)
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        if let Some(t) = self.taken.take() {
            self.comm.put_back(t);
        }
    }
}

/// A send set up once and started many times ([`Comm::send_init`]).
pub struct PersistentSend<'a, T> {
    comm: Comm,
    dest: usize,
    tag: i32,
    data: &'a [T],
}

impl<'a, T: Pod> PersistentSend<'a, T> {
    /// Start one send of the buffer; wait on (or test) the request it gives.
    pub fn start(&self) -> Result<Request<'a, ()>> {
        let data: &'a [u8] = bytemuck::cast_slice(self.data);
        let (ctx, enc) = (self.comm.ctx, (Encoding::Raw, typecode::<T>()));
        let id = self
            .comm
            .start_send(ctx, self.dest, self.tag, data, enc, false)?;
        Ok(Request::send(self.comm.clone(), id, (ctx, self.tag), data))
    }
}

/// A receive set up once and started many times ([`Comm::recv_init`]).
pub struct PersistentRecv<T> {
    comm: Comm,
    source: Source,
    tag: i32,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: Pod> PersistentRecv<T> {
    /// Post one receive; its request gives the numbers and their status.
    pub fn start(&self) -> Result<Request<'static, (Vec<T>, Status)>> {
        self.comm.irecv_vec(self.source, self.tag)
    }
}
