//! Lesson program 16, "manager records list" (multiprocessing in Python, session 3): a
//! manager list holds three (name, score) records; one worker appends ('Jeff', 8), then
//! another prints every record.
//!
//! The manager lives on rank 0 (the main process); the inserting worker is rank 1 and the
//! printing worker rank 2 (both rank 1 with two ranks). Expected output:
//!
//! ```text
//! New record added!
//! Name: Sam / Score: 10, Name: Adam / Score: 9, Name: Kevin / Score: 9, Name: Jeff / Score: 8
//! result: 4 records, last ('Jeff', 8)
//! ```
use ranks::{List, Manager};

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
    let manager = Manager::new(&world, 0)?;
    let records: List<(String, u32)> = manager.list()?;
    if me == 0 {
        for (name, score) in [("Sam", 10), ("Adam", 9), ("Kevin", 9)] {
            records.append(&(name.to_string(), score))?;
        }
    }
    world.barrier()?;
    // p1: insert the new record; p1.join().
    if worker_rank(0, n) == me {
        records.append(&("Jeff".to_string(), 8))?;
        println!("New record added!");
    }
    world.barrier()?;
    // p2: print every record; p2.join().
    if worker_rank(1, n) == me {
        for (name, score) in records.snapshot()? {
            println!("Name: {name}");
            println!("Score: {score}");
        }
    }
    world.barrier()?;
    if me == 0 {
        let all = records.snapshot()?;
        match all.last() {
            Some((name, score)) => {
                println!("result: {} records, last ('{name}', {score})", all.len())
            }
            None => println!("result: 0 records"),
        }
    }
    world.barrier()
}
