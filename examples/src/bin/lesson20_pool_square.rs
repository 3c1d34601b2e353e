//! Lesson program 20, "pool map of square" (multiprocessing in Python, pooling): a pool maps
//! `square` over [1, 2, 3, 4, 5]; each call prints the worker's pid.
//!
//! Rank 0 is the main process and the pool's root; every other rank is a pool worker (rank
//! 0 computes alone in a world of one). Expected output:
//!
//! ```text
//! Worker process id for N: PID      (5 lines)
//! [1, 4, 9, 16, 25]
//! result: [1, 4, 9, 16, 25]
//! ```
use ranks::Pool;

fn square(n: u64) -> u64 {
    println!("Worker process id for {n}: {}", std::process::id());
    n * n
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    // Workers serve inside Pool::new until the root closes the pool.
    if let Some(mut pool) = Pool::new(&world, 0, square)? {
        let mylist: Vec<u64> = vec![1, 2, 3, 4, 5];
        let result = pool.map(mylist)?;
        pool.close();
        pool.join()?;
        println!("{result:?}");
        println!("result: {result:?}");
    }
    world.barrier()
}
