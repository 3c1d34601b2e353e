//! The lesson's barrier primes: each rank counts the primes in its share of [1, END]
//! (4 ranks: [1,1e6], (1e6,2e6], ...), waits at a barrier, then prints its count;
//! rank 0 also prints the total. Usage: primes [END]   (END defaults to 4000000)
use std::time::Instant;

fn is_prime(n: u64) -> bool {
    if n <= 3 {
        return n > 1;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let mut i = 5;
    while i * i <= n {
        if n.is_multiple_of(i) || n.is_multiple_of(i + 2) {
            return false;
        }
        i += 6;
    }
    true
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let end: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(4_000_000);
    let (me, n) = (world.rank() as u64, world.size() as u64);
    let chunk = end / n;
    let lo = me * chunk + 1;
    let hi = if me == n - 1 { end } else { (me + 1) * chunk };
    let start = Instant::now();
    let count = (lo..=hi).filter(|&i| is_prime(i)).count() as u64;
    let secs = start.elapsed().as_secs_f64();
    world.barrier()?;
    println!("rank {me}: {count} primes in [{lo}, {hi}] ({secs:.2} s)");
    if me == 0 {
        let mut total = count;
        for r in 1..world.size() {
            total += world.recv::<u64>(r, 0)?.0;
        }
        println!("total: {total} primes in [1, {end}]");
    } else {
        world.send(0, 0, &count)?;
    }
    Ok(())
}
