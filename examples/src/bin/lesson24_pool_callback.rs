//! Lesson program 24, "apply_async with a callback, jobs added over time" (lesson 5, Coding
//! Examples, Example 5): jobs `sum_all_values(x)` for x = 100000000..100000003 are added to
//! the pool one at a time with pauses in between; a callback on the main rank collects each
//! result as it arrives; `close` and `join` wait for all of them.
//!
//! Rank 0 is the main process (the callback runs there) and the pool's root; every other
//! rank is a pool worker. The lesson's 1 s pauses become 5 ms. Expected output:
//!
//! ```text
//! result_list: [5000000050000000, 5000000150000001, 5000000250000003, 5000000350000006]
//! result: 4 results delivered to the callback before join returned
//! ```
//! (result_list is in completion order, which may differ).
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ranks::Pool;

const JOBS: u64 = 4;
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
    if let Some(mut pool) = Pool::new(&world, 0, sum_all_values)? {
        let start = Instant::now();
        let result_list: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
        for x in START..START + JOBS {
            if x > START {
                // Do something: the main rank sleeping.
                std::thread::sleep(Duration::from_millis(5));
            }
            let sink = result_list.clone();
            let log_result = move |r: &u64| {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(*r);
            };
            // The handle is dropped: the result reaches main only through the callback.
            pool.apply_async(x, Some(Box::new(log_result)))?;
        }
        pool.close();
        pool.join()?;
        println!("Finished: = {:.8}", start.elapsed().as_secs_f64());
        let got = result_list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        println!("result_list: {got:?}");
        let mut sorted = got.clone();
        sorted.sort_unstable();
        let want: Vec<u64> = (START..START + JOBS).map(|x| x * (x + 1) / 2).collect();
        if sorted == want {
            println!(
                "result: {} results delivered to the callback before join returned",
                got.len()
            );
        } else {
            println!("result: WRONG callback results {got:?}");
        }
    }
    world.barrier()
}
