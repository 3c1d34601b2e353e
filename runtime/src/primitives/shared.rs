//! Shared numbers: `SharedValue<T>` and `SharedArray<T>` (`multiprocessing.Value` and
//! `Array`), and raw named blocks of bytes (`multiprocessing.shared_memory.SharedMemory`).
//!
//! Ranks on one host map the same shared memory and read, write and update it with atomic
//! instructions. `with_lock` runs a whole read-modify-write under a [`Lock`] hosted by the
//! owner, like the lock that comes with a Python `Value`.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use bytemuck::Pod;

use super::sync::Lock;
use super::{Ctx, Handle, Object, Reply, Waiter};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::transport::shm::SharedBlock;

/// Numbers that can live in shared memory: 4 or 8 bytes wide.
pub trait SharedNum: Pod + Send + Sync {
    #[doc(hidden)]
    const WIDE: bool;
}
/// Integers, for the atomic arithmetic.
pub trait SharedInt: SharedNum {}

macro_rules! shared_nums {
    ($wide:expr; $($t:ty),*) => {$( impl SharedNum for $t { const WIDE: bool = $wide; } )*};
}
shared_nums!(false; i32, u32, f32);
shared_nums!(true; i64, u64, f64, isize, usize);
impl SharedInt for i32 {}
impl SharedInt for u32 {}
impl SharedInt for i64 {}
impl SharedInt for u64 {}
impl SharedInt for isize {}
impl SharedInt for usize {}

fn job_prefix() -> String {
    let job = crate::config::Config::global()
        .ok()
        .and_then(|c| c.placement.as_ref())
        .map(|p| p.job.clone())
        .or_else(crate::bootstrap::direct_job);
    match job {
        Some(j) => format!("/dev/shm/ranks-{j}"),
        None => format!("/dev/shm/ranks-{}-single", std::process::id()),
    }
}

fn bits_to<T: SharedNum>(b: u64) -> T {
    if T::WIDE {
        bytemuck::cast_slice::<u64, T>(&[b])[0]
    } else {
        bytemuck::cast_slice::<u32, T>(&[b as u32])[0]
    }
}

fn to_bits<T: SharedNum>(v: T) -> u64 {
    if T::WIDE {
        bytemuck::cast_slice::<T, u64>(&[v])[0]
    } else {
        u64::from(bytemuck::cast_slice::<T, u32>(&[v])[0])
    }
}

/// The cells of a mapped block as bit patterns (4 or 8 bytes each), read and updated with
/// atomic instructions: what ranks on the owner's host do directly, and what the owner's
/// service does for ranks on other hosts.
struct Bits {
    block: Arc<SharedBlock>,
    wide: bool,
    len: usize,
}

impl Bits {
    fn load(&self, i: usize) -> u64 {
        if self.wide {
            self.block.u64_at(i).load(SeqCst)
        } else {
            u64::from(self.block.u32_at(i).load(SeqCst))
        }
    }

    fn store(&self, i: usize, b: u64) {
        if self.wide {
            self.block.u64_at(i).store(b, SeqCst)
        } else {
            self.block.u32_at(i).store(b as u32, SeqCst)
        }
    }

    fn cas(&self, i: usize, c: u64, n: u64) -> std::result::Result<u64, u64> {
        if self.wide {
            self.block.u64_at(i).compare_exchange(c, n, SeqCst, SeqCst)
        } else {
            self.block
                .u32_at(i)
                .compare_exchange(c as u32, n as u32, SeqCst, SeqCst)
                .map(u64::from)
                .map_err(u64::from)
        }
    }

    /// Wrapping add (two's complement: the same for signed integers).
    fn add(&self, i: usize, v: u64) -> u64 {
        if self.wide {
            self.block.u64_at(i).fetch_add(v, SeqCst)
        } else {
            u64::from(self.block.u32_at(i).fetch_add(v as u32, SeqCst))
        }
    }
}

// Operations of the owner's service for ranks on other hosts.
const LOAD: u8 = 1;
const STORE: u8 = 2;
const CAS: u8 = 3;
const ADD: u8 = 4;
const LOAD_ALL: u8 = 5;
const STORE_ALL: u8 = 6;

/// The owner's side: serves the cells to ranks on other hosts, with the same atomic
/// instructions the owner's host uses, so both kinds of access mix.
struct CellsObj(Bits);

impl CellsObj {
    fn serve(&self, op: u8, data: &[u8]) -> std::result::Result<Reply, String> {
        let bad = |e: postcard::Error| format!("malformed shared-number request: {e}");
        let at = |i: u64| -> std::result::Result<usize, String> {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < self.0.len)
                .ok_or_else(|| format!("index {i} out of range for {} cells", self.0.len))
        };
        Ok(match op {
            LOAD => Reply::ok(&self.0.load(at(postcard::from_bytes(data).map_err(bad)?)?)),
            STORE => {
                let (i, b): (u64, u64) = postcard::from_bytes(data).map_err(bad)?;
                self.0.store(at(i)?, b);
                Reply::ok(&())
            }
            CAS => {
                let (i, c, n): (u64, u64, u64) = postcard::from_bytes(data).map_err(bad)?;
                Reply::ok(&self.0.cas(at(i)?, c, n))
            }
            ADD => {
                let (i, v): (u64, u64) = postcard::from_bytes(data).map_err(bad)?;
                Reply::ok(&self.0.add(at(i)?, v))
            }
            LOAD_ALL => Reply::ok(&(0..self.0.len).map(|i| self.0.load(i)).collect::<Vec<_>>()),
            STORE_ALL => {
                let v: Vec<u64> = postcard::from_bytes(data).map_err(bad)?;
                if v.len() != self.0.len {
                    return Err(format!("{} values for {} cells", v.len(), self.0.len));
                }
                for (i, b) in v.into_iter().enumerate() {
                    self.0.store(i, b);
                }
                Reply::ok(&())
            }
            _ => return Err(format!("unknown shared-number operation {op}")),
        })
    }
}

impl Object for CellsObj {
    fn handle(&mut self, ctx: &mut Ctx<'_>, from: Waiter, op: u8, data: &[u8]) {
        let r = self.serve(op, data).unwrap_or_else(Reply::Usage);
        ctx.reply(from, r);
    }

    fn cancel(&mut self, _from: Waiter) -> bool {
        false // every request is answered at once
    }
}

/// Where a rank finds the numbers: mapped (on the owner's host), or through the owner.
enum Store {
    Mapped(Bits),
    Remote(Handle),
}

/// Numbers in shared memory with their lock: the common part of values and arrays.
struct Cells<T> {
    store: Store,
    lock: Lock,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: SharedNum> Cells<T> {
    fn new(comm: &Comm, owner: usize, init: &[T]) -> Result<Cells<T>> {
        let lock = Lock::new(comm, owner)?;
        let seq = comm
            .obj_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("{}-shared-{}-{}", job_prefix(), comm.ctx, seq));
        let width = if T::WIDE { 8 } else { 4 };
        let mut made = None;
        if comm.rank() == owner {
            let bits = Bits {
                block: Arc::new(SharedBlock::create(&path, init.len() * width)?),
                wide: T::WIDE,
                len: init.len(),
            };
            for (i, v) in init.iter().enumerate() {
                bits.store(i, to_bits(*v));
            }
            made = Some(bits);
        }
        let served = made.as_ref().map(|b| Bits {
            block: b.block.clone(),
            wide: b.wide,
            len: b.len,
        });
        let handle = Handle::create(comm, owner, "SharedValue", move || {
            Box::new(CellsObj(served.expect("made on the owner")))
        })?;
        // Others look only once the block holds the initial values; the owner's host name
        // says who maps it and who goes through the owner, and its path where it is (each
        // process may name the job differently, as under srun).
        let mut owner_at = (comm.core.host.clone(), path.display().to_string());
        comm.broadcast(owner, &mut owner_at)?;
        let (owner_host, owner_path) = owner_at;
        let store = match made {
            Some(bits) => Store::Mapped(bits),
            None if owner_host == comm.core.host => Store::Mapped(Bits {
                block: Arc::new(SharedBlock::open(
                    std::path::Path::new(&owner_path),
                    Duration::from_secs(30),
                )?),
                wide: T::WIDE,
                len: init.len(),
            }),
            None => Store::Remote(handle),
        };
        // Once everyone on the owner's host has it mapped, the file goes: the memory lives
        // as long as a mapping does, and nothing is left behind, whoever ends how.
        comm.barrier()?;
        if let Store::Mapped(b) = &store {
            if comm.rank() == owner {
                b.block.unlink();
            }
        }
        Ok(Cells {
            store,
            lock,
            len: init.len(),
            _t: PhantomData,
        })
    }

    fn check(&self, i: usize) -> Result<()> {
        if i >= self.len {
            return Err(Error::InvalidArgument(format!(
                "index {i} out of range for a shared array of {}",
                self.len
            )));
        }
        Ok(())
    }

    fn ask<A: serde::Serialize, R: serde::de::DeserializeOwned>(
        h: &Handle,
        op: u8,
        arg: &A,
    ) -> Result<R> {
        h.call_typed(op, arg, None, "shared number")
    }

    fn load(&self, i: usize) -> Result<T> {
        match &self.store {
            Store::Mapped(b) => Ok(bits_to(b.load(i))),
            Store::Remote(h) => Self::ask(h, LOAD, &(i as u64)).map(bits_to),
        }
    }

    fn store(&self, i: usize, v: T) -> Result<()> {
        match &self.store {
            Store::Mapped(b) => {
                b.store(i, to_bits(v));
                Ok(())
            }
            Store::Remote(h) => Self::ask(h, STORE, &(i as u64, to_bits(v))),
        }
    }

    /// Atomic compare-and-swap of the bit patterns.
    fn cas(&self, i: usize, current: T, new: T) -> Result<std::result::Result<T, T>> {
        let (c, n) = (to_bits(current), to_bits(new));
        let r = match &self.store {
            Store::Mapped(b) => b.cas(i, c, n),
            Store::Remote(h) => Self::ask(h, CAS, &(i as u64, c, n))?,
        };
        Ok(r.map(bits_to).map_err(bits_to))
    }

    /// Atomic wrapping add of integers.
    fn fetch_add(&self, i: usize, v: T) -> Result<T> {
        match &self.store {
            Store::Mapped(b) => Ok(bits_to(b.add(i, to_bits(v)))),
            Store::Remote(h) => Self::ask(h, ADD, &(i as u64, to_bits(v))).map(bits_to),
        }
    }

    fn load_all(&self) -> Result<Vec<T>> {
        match &self.store {
            Store::Mapped(b) => Ok((0..self.len).map(|i| bits_to(b.load(i))).collect()),
            Store::Remote(h) => {
                let v: Vec<u64> = Self::ask(h, LOAD_ALL, &())?;
                Ok(v.into_iter().map(bits_to).collect())
            }
        }
    }

    fn store_all(&self, v: Vec<T>) -> Result<()> {
        match &self.store {
            Store::Mapped(b) => {
                for (i, x) in v.into_iter().enumerate() {
                    b.store(i, to_bits(x));
                }
                Ok(())
            }
            Store::Remote(h) => {
                let bits: Vec<u64> = v.into_iter().map(to_bits).collect();
                Self::ask(h, STORE_ALL, &bits)
            }
        }
    }

    /// Run `f` on all the numbers holding the lock.
    fn with_lock<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        let g = self.lock.acquire()?;
        let mut v = self.load_all()?;
        let r = f(&mut v);
        self.store_all(v)?;
        g.release()?;
        Ok(r)
    }
}

/// A shared number (`multiprocessing.Value`), created collectively, hosted by an owner.
///
/// ```
/// let world = ranks::init()?;
/// let counter = ranks::SharedValue::new(&world, 0, 0u64)?;
/// for _ in 0..1000 {
///     counter.fetch_add(1)?;
/// }
/// world.barrier()?;
/// assert_eq!(counter.get()?, 1000 * world.size() as u64);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct SharedValue<T> {
    c: Cells<T>,
}

impl<T: SharedNum> SharedValue<T> {
    /// Create a shared value with `init`, hosted by rank `owner` of `comm` (collective).
    /// Ranks on the owner's host map it; ranks on other hosts reach it through the owner.
    pub fn new(comm: &Comm, owner: usize, init: T) -> Result<SharedValue<T>> {
        Ok(SharedValue {
            c: Cells::new(comm, owner, &[init])?,
        })
    }
    /// Read the value (atomically). Fails only on another host than the owner's, when the
    /// owner is gone.
    pub fn get(&self) -> Result<T> {
        self.c.load(0)
    }
    /// Write the value (atomically).
    pub fn set(&self, v: T) -> Result<()> {
        self.c.store(0, v)
    }
    /// Replace the value with `new` if it is `current`: `Ok(Ok(previous))`, or
    /// `Ok(Err(actual))` when it was not `current`.
    pub fn compare_exchange(&self, current: T, new: T) -> Result<std::result::Result<T, T>> {
        self.c.cas(0, current, new)
    }
    /// Run `f` on the value holding the value's lock, so the whole update is atomic.
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        self.c.with_lock(|v| f(&mut v[0]))
    }
    /// The lock that `with_lock` uses (`Value.get_lock()`).
    pub fn lock(&self) -> &Lock {
        &self.c.lock
    }
}

impl<T: SharedInt> SharedValue<T> {
    /// Add `v` atomically (wrapping); returns the previous value.
    pub fn fetch_add(&self, v: T) -> Result<T> {
        self.c.fetch_add(0, v)
    }
}

/// A shared array of numbers (`multiprocessing.Array`), created collectively.
///
/// ```
/// let world = ranks::init()?;
/// let a = ranks::SharedArray::new(&world, 0, &[0i64; 4])?;
/// a.fetch_add(world.rank() % 4, 1)?;
/// a.with_lock(|v| v[3] += 10)?; // several elements at once, atomically
/// world.barrier()?;
/// assert_eq!(a.to_vec()?.iter().sum::<i64>(), 11 * world.size() as i64);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct SharedArray<T> {
    c: Cells<T>,
}

impl<T: SharedNum> SharedArray<T> {
    /// Create a shared array holding `init`, hosted by rank `owner` of `comm` (collective).
    /// Ranks on the owner's host map it; ranks on other hosts reach it through the owner.
    pub fn new(comm: &Comm, owner: usize, init: &[T]) -> Result<SharedArray<T>> {
        Ok(SharedArray {
            c: Cells::new(comm, owner, init)?,
        })
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.c.len
    }
    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.c.len == 0
    }
    /// Element `i` (atomically).
    pub fn get(&self, i: usize) -> Result<T> {
        self.c.check(i)?;
        self.c.load(i)
    }
    /// Set element `i` (atomically).
    pub fn set(&self, i: usize, v: T) -> Result<()> {
        self.c.check(i)?;
        self.c.store(i, v)
    }
    /// All elements (each read atomically; use `with_lock` for a consistent snapshot).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        self.c.load_all()
    }
    /// Replace element `i` with `new` if it is `current`: `Ok(Ok(previous))`, or
    /// `Ok(Err(actual))` when it was not `current`.
    pub fn compare_exchange(
        &self,
        i: usize,
        current: T,
        new: T,
    ) -> Result<std::result::Result<T, T>> {
        self.c.check(i)?;
        self.c.cas(i, current, new)
    }
    /// Run `f` on the whole array holding the array's lock.
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        self.c.with_lock(f)
    }
    /// The array's lock.
    pub fn lock(&self) -> &Lock {
        &self.c.lock
    }
}

impl<T: SharedInt> SharedArray<T> {
    /// Add `v` to element `i` atomically (wrapping); returns the previous value.
    pub fn fetch_add(&self, i: usize, v: T) -> Result<T> {
        self.c.check(i)?;
        self.c.fetch_add(i, v)
    }
}

/// A named block of raw bytes shared by the ranks of one host
/// (`multiprocessing.shared_memory.SharedMemory`). One rank creates it; others attach by
/// name. Reads and writes are done byte by byte with atomic instructions.
///
/// ```
/// let block = ranks::SharedMemory::create("doc-example", 16)?;
/// block.write(0, b"hello")?;
/// let mut buf = [0u8; 5];
/// block.read(0, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// // Another process of the job: ranks::SharedMemory::attach("doc-example", timeout)
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct SharedMemory {
    block: SharedBlock,
    name: String,
}

impl SharedMemory {
    fn path(name: &str) -> Result<PathBuf> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::InvalidArgument(format!(
                "shared memory name {name:?}: use letters, digits, '-' and '_'"
            )));
        }
        Ok(PathBuf::from(format!("{}-mem-{name}", job_prefix())))
    }

    /// Create a zero-filled block of `size` bytes named `name` (within this job).
    pub fn create(name: &str, size: usize) -> Result<SharedMemory> {
        Ok(SharedMemory {
            block: SharedBlock::create(&Self::path(name)?, size)?,
            name: name.to_string(),
        })
    }

    /// Attach to the block named `name`, waiting up to `wait` for its creator. Blocks are
    /// shared by the ranks of one host: a block created on another host is not found (use a
    /// [`SharedArray`], which ranks on other hosts reach through its owner).
    pub fn attach(name: &str, wait: Duration) -> Result<SharedMemory> {
        let block = SharedBlock::open(&Self::path(name)?, wait).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => Error::io(
                format!(
                    "no shared memory block named {name:?} on this host ({}) after {wait:?}: \
                     a SharedMemory block is shared by the ranks of one host (is its \
                     creator on another host? across hosts, use a SharedArray, which is \
                     served by its owner)",
                    crate::bootstrap::this_host()
                ),
                source,
            ),
            e => e,
        })?;
        Ok(SharedMemory {
            block,
            name: name.to_string(),
        })
    }

    /// The block's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    /// Whether the block has no bytes.
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    /// Copy bytes starting at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.range(offset, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.block.u8_at(offset + i).load(SeqCst);
        }
        Ok(())
    }

    /// Copy `data` into the block at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.range(offset, data.len())?;
        for (i, b) in data.iter().enumerate() {
            self.block.u8_at(offset + i).store(*b, SeqCst);
        }
        Ok(())
    }

    /// The whole block.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len()];
        let _ = self.read(0, &mut v);
        v
    }

    fn range(&self, offset: usize, len: usize) -> Result<()> {
        if offset.checked_add(len).is_none_or(|e| e > self.len()) {
            return Err(Error::InvalidArgument(format!(
                "bytes {offset}..{} are outside the {}-byte block",
                offset.saturating_add(len),
                self.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(len: usize, wide: bool) -> CellsObj {
        let path = PathBuf::from(format!(
            "/dev/shm/ranks-unit-{}-cells-{len}-{wide}",
            std::process::id()
        ));
        let width = if wide { 8 } else { 4 };
        CellsObj(Bits {
            block: Arc::new(SharedBlock::create(&path, len * width).unwrap()),
            wide,
            len,
        })
    }

    fn ok<R: serde::de::DeserializeOwned>(r: std::result::Result<Reply, String>) -> R {
        match r.unwrap() {
            Reply::Ok(b) => postcard::from_bytes(&b).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn enc<A: serde::Serialize>(a: &A) -> Vec<u8> {
        postcard::to_allocvec(a).unwrap()
    }

    /// What the owner does for ranks on other hosts: every operation on the cells, with
    /// 4-byte cells wrapping like the local atomics; bad requests are refused, not obeyed.
    #[test]
    fn the_owner_serves_every_operation_and_refuses_bad_requests() {
        let c = cells(3, false);
        let () = ok(c.serve(STORE, &enc(&(1u64, 7u64))));
        assert_eq!(ok::<u64>(c.serve(LOAD, &enc(&1u64))), 7);
        assert_eq!(
            ok::<u64>(c.serve(ADD, &enc(&(1u64, u64::from(u32::MAX))))),
            7
        );
        assert_eq!(ok::<u64>(c.serve(LOAD, &enc(&1u64))), 6); // 7 - 1, wrapped in 32 bits
        let r: std::result::Result<u64, u64> = ok(c.serve(CAS, &enc(&(1u64, 5u64, 9u64))));
        assert_eq!(r, Err(6));
        let r: std::result::Result<u64, u64> = ok(c.serve(CAS, &enc(&(1u64, 6u64, 9u64))));
        assert_eq!(r, Ok(6));
        let () = ok(c.serve(STORE_ALL, &enc(&vec![1u64, 2, 3])));
        assert_eq!(ok::<Vec<u64>>(c.serve(LOAD_ALL, &[])), [1, 2, 3]);
        // Out of range, wrong length, malformed, unknown: refused with a reason.
        assert!(c
            .serve(LOAD, &enc(&3u64))
            .unwrap_err()
            .contains("out of range"));
        assert!(c
            .serve(STORE_ALL, &enc(&vec![1u64]))
            .unwrap_err()
            .contains("1 values"));
        assert!(c.serve(ADD, &[0xff]).unwrap_err().contains("malformed"));
        assert!(c.serve(99, &[]).unwrap_err().contains("unknown"));
        assert_eq!(ok::<Vec<u64>>(c.serve(LOAD_ALL, &[])), [1, 2, 3]);

        let w = cells(1, true);
        let v = to_bits(-2.5f64);
        let () = ok(w.serve(STORE, &enc(&(0u64, v))));
        assert_eq!(bits_to::<f64>(ok(w.serve(LOAD, &enc(&0u64)))), -2.5);
    }
}
