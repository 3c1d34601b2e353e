//! Ranks 0 and 1 bounce a counter back and forth; every other rank pairs up the same way
//! (2 with 3, 4 with 5, ...). Usage: ping_pong [ROUNDS]
use std::time::Instant;

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let (me, n) = (world.rank(), world.size());
    let partner = me ^ 1;
    if partner >= n {
        println!("rank {me}: no partner, sitting this one out");
        return Ok(());
    }
    let start = Instant::now();
    let mut ball = 0u64;
    for _ in 0..rounds {
        if me % 2 == 0 {
            world.send(partner, 0, &ball)?;
            ball = world.recv::<u64>(partner, 0)?.0;
        } else {
            ball = world.recv::<u64>(partner, 0)?.0 + 1;
            world.send(partner, 0, &ball)?;
        }
    }
    if me % 2 == 0 {
        assert_eq!(ball, rounds, "every round trip increments the ball once");
        let us = start.elapsed().as_secs_f64() * 1e6 / (2.0 * rounds as f64);
        println!("ranks {me}<->{partner}: {rounds} round trips, ball = {ball}, {us:.2} us one-way");
    }
    Ok(())
}
