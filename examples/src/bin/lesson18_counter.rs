//! Lesson program 18, "shared counter" (inter-process communication slides 2, Value() and
//! Lock): ten workers each add 1 ten times to a shared counter, sleeping 1 ms before each
//! increment.
//!
//! The counters live on rank 0, the main process; the ten workers run on the other ranks in
//! turn. Two correct versions run one after the other: under a shared lock (the lesson's
//! fix) and with an atomic add. Expected output:
//!
//! ```text
//! Final value (lock): 100
//! Final value (atomic): 100
//! result: 100 with the lock, 100 with atomic add
//! ```
//!
//! `lesson18_counter unlocked` runs the lesson's broken version instead, a separate read
//! and write with no lock, and prints its final value (the lesson saw 55 to 75).
use std::time::Duration;

use ranks::{Comm, Lock, SharedValue};

const WORKERS: usize = 10;
const INCREMENTS: usize = 10;

/// Rank that runs logical worker `k`: the ranks other than 0 in turn (rank 0 when alone).
fn worker_rank(k: usize, n: usize) -> usize {
    if n > 1 {
        1 + k % (n - 1)
    } else {
        0
    }
}

/// Run this rank's share of the ten workers, each doing `increment` ten times.
fn run_workers(
    world: &Comm,
    mut increment: impl FnMut() -> ranks::Result<()>,
) -> ranks::Result<()> {
    let (me, n) = (world.rank(), world.size());
    for _ in (0..WORKERS).filter(|&k| worker_rank(k, n) == me) {
        for _ in 0..INCREMENTS {
            std::thread::sleep(Duration::from_millis(1));
            increment()?;
        }
    }
    world.barrier()
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let me = world.rank();
    let unlocked = std::env::args().skip(1).any(|a| a == "unlocked");
    if unlocked {
        let counter = SharedValue::<i32>::new(&world, 0, 0)?;
        run_workers(&world, || {
            counter.set(counter.get()? + 1)?;
            Ok(())
        })?;
        if me == 0 {
            println!("Final value (unlocked): {}", counter.get()?);
            println!("result (unlocked): {}", counter.get()?);
        }
        return world.barrier();
    }
    let val_lock = Lock::new(&world, 0)?;
    let locked = SharedValue::<i32>::new(&world, 0, 0)?;
    run_workers(&world, || {
        let guard = val_lock.acquire()?;
        locked.set(locked.get()? + 1)?;
        guard.release()
    })?;
    let atomic = SharedValue::<i32>::new(&world, 0, 0)?;
    run_workers(&world, || {
        atomic.fetch_add(1)?;
        Ok(())
    })?;
    if me == 0 {
        println!("Final value (lock): {}", locked.get()?);
        println!("Final value (atomic): {}", atomic.get()?);
        println!(
            "result: {} with the lock, {} with atomic add",
            locked.get()?,
            atomic.get()?
        );
    }
    world.barrier()
}
