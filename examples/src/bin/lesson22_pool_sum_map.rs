//! Lesson program 22, "pool map of sum_all_values" (lesson 5, Coding Examples, Example 1):
//! a pool maps `sum_all_values` (1 + 2 + ... + x, with a loop) over
//! range(100000000, 100000100).
//!
//! Rank 0 is the main process and the pool's root; every other rank is a pool worker (the
//! lesson's Pool(4) is `-n 5`). Expected output:
//!
//! ```text
//! Finished: = S seconds
//! results: [5000000050000000, 5000000150000001, ..., 5000009950004950]
//! result: 100 values, first 5000000050000000, last 5000009950004950
//! ```
//! An optional argument sets how many values to compute (default 100).
use std::time::Instant;

use ranks::Pool;

const START: u64 = 100_000_000;

fn sum_all_values(x: u64) -> u64 {
    let mut total = 0u64;
    for i in 1..=x {
        total += i;
    }
    total
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let count: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    if let Some(mut pool) = Pool::new(&world, 0, sum_all_values)? {
        let start = Instant::now();
        let results = pool.map((START..START + count).collect())?;
        println!(
            "Finished: = {:.8} seconds with {} workers",
            start.elapsed().as_secs_f64(),
            pool.workers()
        );
        pool.close();
        pool.join()?;
        println!("results: {results:?}");
        match (results.first(), results.last()) {
            (Some(first), Some(last)) => println!(
                "result: {} values, first {first}, last {last}",
                results.len()
            ),
            _ => println!("result: 0 values"),
        }
    }
    world.barrier()
}
