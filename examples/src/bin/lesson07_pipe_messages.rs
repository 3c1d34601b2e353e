//! Lesson program 7, "producer and consumer on a pipe" (inter-process communication slides,
//! pipes): the producer sends eight messages with random delays between them; the consumer
//! prints each one and stops at "END".
//!
//! The producer is rank 0 and the consumer rank 1 (a pipe joins two ranks; other ranks only
//! wait). The lesson's delays of 1 to 2 s become 1 to 4 ms. Needs at least 2 ranks.
//! Expected output:
//!
//! ```text
//! Message Received: hello
//! Message Received: are you there?
//! ...
//! Message Received: END
//! result: 8 messages received in order, stopped at END
//! done
//! ```
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ranks::Pipe;

const MESSAGES: [&str; 8] = [
    "hello",
    "are you there?",
    "hey",
    "LOL",
    "K",
    "THX",
    "Bye!",
    "END",
];

/// A small xorshift generator seeded from the clock and the pid.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t ^ (u64::from(std::process::id()) << 32) | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        eprintln!("lesson07_pipe_messages needs at least 2 ranks (producer and consumer)");
        std::process::exit(2);
    }
    // Duplex, like multiprocessing.Pipe(); rank 0 holds one end, rank 1 the other.
    let pipe: Option<Pipe<String>> = Pipe::new(&world, 0, 1, true)?;
    if let Some(mut pipe) = pipe {
        if me == 0 {
            let mut rng = Rng::new();
            for m in MESSAGES {
                std::thread::sleep(Duration::from_millis(1 + rng.below(4)));
                pipe.send(&m.to_string())?;
            }
            pipe.close()?;
        } else {
            let mut got = Vec::new();
            loop {
                let data = pipe.recv()?;
                println!("Message Received: {data}");
                let end = data == "END";
                got.push(data);
                if end {
                    break;
                }
            }
            pipe.close()?;
            if got == MESSAGES {
                println!(
                    "result: {} messages received in order, stopped at END",
                    got.len()
                );
            } else {
                println!("result: WRONG messages {got:?}");
            }
        }
    }
    world.barrier()?;
    if me == 0 {
        println!("done");
    }
    Ok(())
}
