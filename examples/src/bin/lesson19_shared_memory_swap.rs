//! Lesson program 19, "scramble a shared block" (inter-process communication slides 2,
//! multiprocessing.shared_memory): a block of 20 bytes holds 0..19; ten workers attach to it
//! by name and each swap ten random pairs of bytes under a shared lock.
//!
//! Rank 0 (the main process) creates the block and hosts the lock; the ten workers run on
//! the other ranks in turn. Every swap holds the lock, so the block ends up a permutation of
//! 0..19. Expected output:
//!
//! ```text
//! block: [...]                    (the 20 bytes in their new order)
//! result: a permutation of 0..19
//! ```
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ranks::{Lock, SharedMemory};

const NUM_ITEMS: usize = 20;
const WORKERS: usize = 10;
const NAME: &str = "mem1";

/// A small xorshift generator seeded from the clock, the pid and a stream number.
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(
            t ^ (u64::from(std::process::id()) << 32) ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                | 1,
        )
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Rank that runs logical worker `k`: the ranks other than 0 in turn (rank 0 when alone).
fn worker_rank(k: usize, n: usize) -> usize {
    if n > 1 {
        1 + k % (n - 1)
    } else {
        0
    }
}

fn scramble(lock: &Lock, worker: usize) -> ranks::Result<()> {
    let block = SharedMemory::attach(NAME, Duration::from_secs(10))?;
    let mut rng = Rng::new(worker as u64);
    for _ in 0..10 {
        let i = rng.below(NUM_ITEMS as u64) as usize;
        let j = rng.below(NUM_ITEMS as u64) as usize;
        let guard = lock.acquire()?;
        let (mut a, mut b) = ([0u8], [0u8]);
        block.read(i, &mut a)?;
        block.read(j, &mut b)?;
        block.write(i, &b)?;
        block.write(j, &a)?;
        guard.release()?;
    }
    Ok(())
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let lock = Lock::new(&world, 0)?;
    let created = if me == 0 {
        let block = SharedMemory::create(NAME, NUM_ITEMS)?;
        let init: Vec<u8> = (0..NUM_ITEMS as u8).collect();
        block.write(0, &init)?;
        Some(block)
    } else {
        None
    };
    world.barrier()?;
    for k in (0..WORKERS).filter(|&k| worker_rank(k, n) == me) {
        scramble(&lock, k)?;
    }
    world.barrier()?;
    if let Some(block) = &created {
        let bytes = block.to_vec();
        println!("block: {bytes:?}");
        let mut sorted = bytes.clone();
        sorted.sort_unstable();
        if sorted == (0..NUM_ITEMS as u8).collect::<Vec<_>>() {
            println!("result: a permutation of 0..19");
        } else {
            println!("result: NOT a permutation of 0..19");
        }
    }
    world.barrier()?;
    drop(created);
    Ok(())
}
