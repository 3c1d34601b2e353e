//! Lesson program 3, "shared list [0, 0, 0]" (lesson 5 prepare: sharing data between
//! processes): worker i adds 1 to slot i of a list ten times.
//!
//! Rank 0 is the main process; the three workers run on the other ranks (in turn, so any
//! world size works). With a plain list every process changes its own copy and main still
//! sees zeros; with a manager list (hosted by rank 0, each increment an atomic `update`)
//! main sees every increment. Expected output:
//!
//! ```text
//! plain copies: main sees [0, 0, 0], sum 0
//! manager list: [10, 10, 10], sum 30
//! result: plain copies 0, manager list 30
//! ```
//!
//! `lesson03_shared_list unlocked` does each increment as a separate `get` and `set` (the
//! lesson's `data[i] += 1` on a proxy), a read-modify-write that is not atomic.
use ranks::{List, Manager};

/// Number of workers in the lesson.
const WORKERS: usize = 3;

/// Rank that runs logical worker `k`: the ranks other than 0 in turn (rank 0 when alone).
fn worker_rank(k: usize, n: usize) -> usize {
    if n > 1 {
        1 + k % (n - 1)
    } else {
        0
    }
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let unlocked = std::env::args().skip(1).any(|a| a == "unlocked");
    let manager = Manager::new(&world, 0)?;
    let shared: List<i64> = manager.list()?;
    if me == 0 {
        for _ in 0..WORKERS {
            shared.append(&0)?;
        }
    }
    // The list holds [0, 0, 0] before any worker starts.
    world.barrier()?;
    // Every process's own plain list, like the copy a child process gets.
    let plain = vec![0i64; WORKERS];
    for k in (0..WORKERS).filter(|&k| worker_rank(k, n) == me) {
        let mut copy = plain.clone();
        for _ in 0..10 {
            copy[k] += 1;
        }
        println!("Process {k} (rank {me}) plain copy: {copy:?}");
        for _ in 0..10 {
            if unlocked {
                let v = shared.get(k)?;
                shared.set(k, &(v + 1))?;
            } else {
                shared.update(k, |v| v + 1)?;
            }
        }
        println!(
            "Process {k} (rank {me}) manager list: {:?}",
            shared.snapshot()?
        );
    }
    world.barrier()?;
    if me == 0 {
        let plain_sum: i64 = plain.iter().sum();
        let data = shared.snapshot()?;
        let managed_sum: i64 = data.iter().sum();
        println!("plain copies: main sees {plain:?}, sum {plain_sum}");
        println!("manager list: {data:?}, sum {managed_sum}");
        if unlocked {
            println!("result (unlocked): plain copies {plain_sum}, manager list {managed_sum}");
        } else {
            println!("result: plain copies {plain_sum}, manager list {managed_sum}");
        }
    }
    world.barrier()
}
