//! Lesson program 6, "ten processes put a result each" (inter-process communication slides,
//! review of queues): ten workers each put one result on a shared queue; main gets ten.
//!
//! Rank 0 is the main process and hosts the queue; the ten workers run on the other ranks in
//! turn (many producers at once). Expected output:
//!
//! ```text
//! Result: worker K on rank R: K squared is K*K     (10 lines)
//! result: 10 results, from workers [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
//! ```
use ranks::Queue;
use serde::{Deserialize, Serialize};

const WORKERS: usize = 10;

#[derive(Serialize, Deserialize)]
struct Outcome {
    worker: usize,
    rank: usize,
    value: u64,
}

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
    let main_queue: Queue<Outcome> = Queue::new(&world, 0, 0)?;
    for k in (0..WORKERS).filter(|&k| worker_rank(k, n) == me) {
        let value = (k * k) as u64;
        main_queue.put(&Outcome {
            worker: k,
            rank: me,
            value,
        })?;
    }
    if me == 0 {
        let mut from = Vec::new();
        for _ in 0..WORKERS {
            let r = main_queue.get()?;
            println!(
                "Result: worker {} on rank {}: {} squared is {}",
                r.worker, r.rank, r.worker, r.value
            );
            from.push(r.worker);
        }
        from.sort_unstable();
        println!("result: {} results, from workers {from:?}", from.len());
    }
    world.barrier()
}
