//! Lesson program 17, "bank balance" (multiprocessing in Python, race condition and locks):
//! one process withdraws 1 ten thousand times and another deposits 1 ten thousand times on
//! a shared balance of 100; the whole transaction is performed ten times.
//!
//! The balance (a shared value) and the lock live on rank 0, the main process; the withdraw
//! worker is rank 1 and the deposit worker rank 2 (both rank 1 with two ranks, so use at
//! least 3 ranks to see them overlap). Every read-modify-write holds the lock, so the final
//! balance is 100 every time. Expected output:
//!
//! ```text
//! Final balance = 100          (10 lines)
//! result: 100 every time
//! ```
//!
//! `lesson17_bank unlocked` reads and writes the balance without the lock (the lesson's race)
//! and prints whatever balances come out. An optional number sets the transactions per
//! worker (default 10000).
use ranks::{Lock, SharedValue};

const ROUNDS: usize = 10;

/// Rank that runs logical worker `k`: the ranks other than 0 in turn (rank 0 when alone).
fn worker_rank(k: usize, n: usize) -> usize {
    if n > 1 {
        1 + k % (n - 1)
    } else {
        0
    }
}

/// `count` times: balance = balance + delta, under `lock` unless `lock` is None.
fn transact(
    balance: &SharedValue<i32>,
    lock: Option<&Lock>,
    delta: i32,
    count: u32,
) -> ranks::Result<()> {
    for _ in 0..count {
        match lock {
            Some(lock) => {
                let guard = lock.acquire()?;
                balance.set(balance.get()? + delta)?;
                guard.release()?;
            }
            None => balance.set(balance.get()? + delta)?,
        }
    }
    Ok(())
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let unlocked = args.iter().any(|a| a == "unlocked");
    let count: u32 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(10_000);
    let mut finals = Vec::new();
    for _ in 0..ROUNDS {
        // perform_transactions(): a fresh balance and lock each time (collective).
        let balance = SharedValue::<i32>::new(&world, 0, 100)?;
        let lock = Lock::new(&world, 0)?;
        let lock = (!unlocked).then_some(&lock);
        if worker_rank(0, n) == me {
            transact(&balance, lock, -1, count)?;
        }
        if worker_rank(1, n) == me {
            transact(&balance, lock, 1, count)?;
        }
        world.barrier()?;
        if me == 0 {
            let b = balance.get()?;
            println!("Final balance = {b}");
            finals.push(b);
        }
        // Nobody touches this round's balance any more once everyone is here.
        world.barrier()?;
    }
    if me == 0 {
        if unlocked {
            println!("result (unlocked): final balances {finals:?}");
        } else if finals.iter().all(|&b| b == 100) {
            println!("result: 100 every time");
        } else {
            println!("result: WRONG final balances {finals:?}");
        }
    }
    world.barrier()
}
