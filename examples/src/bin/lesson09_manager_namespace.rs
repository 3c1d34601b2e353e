//! Lesson program 9, "manager namespace with a count and a log" (inter-process communication
//! slides, managers): `enter_proc` adds 1 to `count` ten times and `exit_proc` subtracts 1
//! ten times, both appending to a shared log, with small random sleeps.
//!
//! The manager (namespace and log list) lives on rank 0, the main process; the two workers
//! run on the other ranks (rank 1 and rank 2, or both on rank 1 with two ranks). Each change
//! of `count` is one atomic `update` on the manager, and the log is a manager list (the
//! lesson's fix for its empty log). Expected output:
//!
//! ```text
//! count: 0
//! log: ["Entered", "Left", ...]               (20 entries)
//! result: count 0, log of 20 entries (10 Entered, 10 Left)
//! ```
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ranks::{List, Manager, Namespace};

/// A small xorshift generator seeded from the clock and the pid.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t ^ (u64::from(std::process::id()) << 32) | 1)
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

/// Ten times: wait a little, change the count by `delta`, log `what`.
fn proc_body(ns: &Namespace, log: &List<String>, delta: i64, what: &str) -> ranks::Result<()> {
    let mut rng = Rng::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_micros(1000 + rng.below(1000)));
        ns.update::<i64>("count", |c| c.unwrap_or(0) + delta)?;
        log.append(&what.to_string())?;
    }
    Ok(())
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let manager = Manager::new(&world, 0)?;
    let ns = manager.namespace()?;
    let log: List<String> = manager.list()?;
    if me == 0 {
        ns.set("count", &0i64)?;
    }
    world.barrier()?;
    if worker_rank(0, n) == me {
        proc_body(&ns, &log, 1, "Entered")?;
    }
    if worker_rank(1, n) == me {
        proc_body(&ns, &log, -1, "Left")?;
    }
    world.barrier()?;
    if me == 0 {
        let count: i64 = ns.get("count")?.unwrap_or(i64::MIN);
        let entries = log.snapshot()?;
        let entered = entries.iter().filter(|e| *e == "Entered").count();
        let left = entries.iter().filter(|e| *e == "Left").count();
        println!("count: {count}");
        println!("log: {entries:?}");
        println!(
            "result: count {count}, log of {} entries ({entered} Entered, {left} Left)",
            entries.len()
        );
    }
    world.barrier()
}
