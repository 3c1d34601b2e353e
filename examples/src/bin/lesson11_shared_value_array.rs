//! Lesson program 11, "shared Value and Array" (lesson 5, Manager() Example 2): three
//! workers add 1 five times to a shared integer; two workers add (id + 1) to each element of
//! the shared array [1.0, 2.5, 3.0].
//!
//! The value and the array live on rank 0 (the main process); the five workers run on the
//! other ranks in turn. Each update runs under the object's lock, so the count is 15 (the
//! lesson printed 12: its `+= 1` raced). Expected output:
//!
//! ```text
//! Final shared_int: 15
//! Final shared_float_array: [4.0, 5.5, 6.0]
//! result: 15 [4.0, 5.5, 6.0]
//! ```
//!
//! `lesson11_shared_value_array unlocked` does every update as a separate read and write
//! without the lock, the lesson's race, and prints whatever comes out.
use ranks::{SharedArray, SharedValue};

const VALUE_WORKERS: usize = 3;
const ARRAY_WORKERS: usize = 2;

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
    let shared_int = SharedValue::<i64>::new(&world, 0, 0)?;
    let shared_array = SharedArray::<f64>::new(&world, 0, &[1.0, 2.5, 3.0])?;
    if me == 0 {
        println!("Initial shared_int: {}", shared_int.get()?);
        println!("Initial shared_float_array: {:?}", shared_array.to_vec()?);
    }
    world.barrier()?;
    for id in (0..VALUE_WORKERS).filter(|&k| worker_rank(k, n) == me) {
        for _ in 0..5 {
            let now = if unlocked {
                let v = shared_int.get()? + 1;
                shared_int.set(v)?;
                v
            } else {
                shared_int.with_lock(|v| {
                    *v += 1;
                    *v
                })?
            };
            println!("Process {id}: Value incremented to {now}");
        }
    }
    for id in (0..ARRAY_WORKERS).filter(|&k| worker_rank(VALUE_WORKERS + k, n) == me) {
        let add = (id + 1) as f64;
        for i in 0..shared_array.len() {
            let now = if unlocked {
                let v = shared_array.get(i)? + add;
                shared_array.set(i, v)?;
                v
            } else {
                shared_array.with_lock(|a| {
                    a[i] += add;
                    a[i]
                })?
            };
            println!("Process {id}: Array[{i}] updated to {now:?}");
        }
    }
    world.barrier()?;
    if me == 0 {
        let total = shared_int.get()?;
        let arr = shared_array.to_vec()?;
        println!("Final shared_int: {total}");
        println!("Final shared_float_array: {arr:?}");
        if unlocked {
            println!("result (unlocked): {total} {arr:?}");
        } else {
            println!("result: {total} {arr:?}");
        }
    }
    world.barrier()
}
