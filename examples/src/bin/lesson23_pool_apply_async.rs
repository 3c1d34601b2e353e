//! Lesson program 23, "pool apply_async, then get" (lesson 5, Coding Examples, Example 2):
//! one `apply_async(sum_all_values, x)` per x in range(10000, 10010), then a `get` on each
//! handle.
//!
//! Rank 0 is the main process and the pool's root; every other rank is a pool worker.
//! Expected output:
//!
//! ```text
//! result: [50005000, 50015001, 50025003, 50035006, 50045010, 50055015, 50065021, 50075028, 50085036, 50095045]
//! ```
use std::time::Instant;

use ranks::Pool;

fn sum_all_values(x: u64) -> u64 {
    let mut total = 0u64;
    for i in 1..=x {
        total += i;
    }
    total
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    if let Some(mut pool) = Pool::new(&world, 0, sum_all_values)? {
        let start = Instant::now();
        // Futures: submitting returns at once.
        let results = (10_000..10_010u64)
            .map(|x| pool.apply_async(x, None))
            .collect::<Result<Vec<_>, _>>()?;
        println!(
            "submitted {} jobs in {:.6} s",
            results.len(),
            start.elapsed().as_secs_f64()
        );
        // Do something else here; then collect every result.
        let output = results
            .into_iter()
            .map(|r| r.get())
            .collect::<Result<Vec<u64>, _>>()?;
        println!("Finished: = {:.8}", start.elapsed().as_secs_f64());
        pool.close();
        pool.join()?;
        println!("result: {output:?}");
    }
    world.barrier()
}
