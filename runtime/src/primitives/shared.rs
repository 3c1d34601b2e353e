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
        .map(|p| p.job.clone());
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

/// Numbers in shared memory with their lock: the common part of values and arrays.
struct Cells<T> {
    block: Arc<SharedBlock>,
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
        let block = if comm.rank() == owner {
            let b = SharedBlock::create(&path, init.len() * width)?;
            let cells = Cells {
                block: Arc::new(b),
                lock: lock.clone(),
                len: init.len(),
                _t: PhantomData,
            };
            for (i, v) in init.iter().enumerate() {
                cells.store(i, *v);
            }
            // Others may map it only once it holds the initial values.
            comm.barrier()?;
            return Ok(cells);
        } else {
            comm.barrier()?;
            SharedBlock::open(&path, Duration::from_secs(30))?
        };
        Ok(Cells {
            block: Arc::new(block),
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

    fn load(&self, i: usize) -> T {
        if T::WIDE {
            bits_to(self.block.u64_at(i).load(SeqCst))
        } else {
            bits_to(u64::from(self.block.u32_at(i).load(SeqCst)))
        }
    }

    fn store(&self, i: usize, v: T) {
        let b = to_bits(v);
        if T::WIDE {
            self.block.u64_at(i).store(b, SeqCst)
        } else {
            self.block.u32_at(i).store(b as u32, SeqCst)
        }
    }

    /// Atomic compare-and-swap of the bit patterns.
    fn cas(&self, i: usize, current: T, new: T) -> std::result::Result<T, T> {
        let (c, n) = (to_bits(current), to_bits(new));
        if T::WIDE {
            self.block
                .u64_at(i)
                .compare_exchange(c, n, SeqCst, SeqCst)
                .map(bits_to)
                .map_err(bits_to)
        } else {
            self.block
                .u32_at(i)
                .compare_exchange(c as u32, n as u32, SeqCst, SeqCst)
                .map(|b| bits_to(u64::from(b)))
                .map_err(|b| bits_to(u64::from(b)))
        }
    }

    /// Atomic wrapping add of integers (two's complement: the same for signed ones).
    fn fetch_add(&self, i: usize, v: T) -> T {
        let b = to_bits(v);
        if T::WIDE {
            bits_to(self.block.u64_at(i).fetch_add(b, SeqCst))
        } else {
            bits_to(u64::from(self.block.u32_at(i).fetch_add(b as u32, SeqCst)))
        }
    }
}

/// A shared number (`multiprocessing.Value`), created collectively, hosted by an owner.
///
/// ```
/// let world = ranks::init()?;
/// let counter = ranks::SharedValue::new(&world, 0, 0u64)?;
/// for _ in 0..1000 {
///     counter.fetch_add(1);
/// }
/// world.barrier()?;
/// assert_eq!(counter.get(), 1000 * world.size() as u64);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct SharedValue<T> {
    c: Cells<T>,
}

impl<T: SharedNum> SharedValue<T> {
    /// Create a shared value with `init`, hosted by rank `owner` of `comm` (collective).
    pub fn new(comm: &Comm, owner: usize, init: T) -> Result<SharedValue<T>> {
        Ok(SharedValue {
            c: Cells::new(comm, owner, &[init])?,
        })
    }
    /// Read the value (atomically).
    pub fn get(&self) -> T {
        self.c.load(0)
    }
    /// Write the value (atomically).
    pub fn set(&self, v: T) {
        self.c.store(0, v)
    }
    /// Replace the value with `new` if it is `current`; `Err(actual)` otherwise.
    pub fn compare_exchange(&self, current: T, new: T) -> std::result::Result<T, T> {
        self.c.cas(0, current, new)
    }
    /// Run `f` on the value holding the value's lock, so the whole update is atomic.
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut T) -> R) -> Result<R> {
        let g = self.c.lock.acquire()?;
        let mut v = self.c.load(0);
        let r = f(&mut v);
        self.c.store(0, v);
        g.release()?;
        Ok(r)
    }
    /// The lock that `with_lock` uses (`Value.get_lock()`).
    pub fn lock(&self) -> &Lock {
        &self.c.lock
    }
}

impl<T: SharedInt> SharedValue<T> {
    /// Add `v` atomically (wrapping); returns the previous value.
    pub fn fetch_add(&self, v: T) -> T {
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
/// assert_eq!(a.to_vec().iter().sum::<i64>(), 11 * world.size() as i64);
/// # Ok::<(), ranks::Error>(())
/// ```
pub struct SharedArray<T> {
    c: Cells<T>,
}

impl<T: SharedNum> SharedArray<T> {
    /// Create a shared array holding `init`, hosted by rank `owner` of `comm` (collective).
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
        Ok(self.c.load(i))
    }
    /// Set element `i` (atomically).
    pub fn set(&self, i: usize, v: T) -> Result<()> {
        self.c.check(i)?;
        self.c.store(i, v);
        Ok(())
    }
    /// All elements (each read atomically; use `with_lock` for a consistent snapshot).
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.c.len).map(|i| self.c.load(i)).collect()
    }
    /// Replace element `i` with `new` if it is `current`; `Err(actual)` otherwise.
    pub fn compare_exchange(
        &self,
        i: usize,
        current: T,
        new: T,
    ) -> Result<std::result::Result<T, T>> {
        self.c.check(i)?;
        Ok(self.c.cas(i, current, new))
    }
    /// Run `f` on the whole array holding the array's lock.
    pub fn with_lock<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> Result<R> {
        let g = self.c.lock.acquire()?;
        let mut v = self.to_vec();
        let r = f(&mut v);
        for (i, x) in v.into_iter().enumerate() {
            self.c.store(i, x);
        }
        g.release()?;
        Ok(r)
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
        Ok(self.c.fetch_add(i, v))
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

    /// Attach to the block named `name`, waiting up to `wait` for its creator.
    pub fn attach(name: &str, wait: Duration) -> Result<SharedMemory> {
        Ok(SharedMemory {
            block: SharedBlock::open(&Self::path(name)?, wait)?,
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
