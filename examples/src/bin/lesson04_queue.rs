//! Lesson program 4, "writer and reader on a queue" (lesson 5 prepare, `mp.Queue`): the
//! writer puts 0..9 on a shared queue, the reader gets and prints them.
//!
//! The queue lives on rank 0 (the main process); the writer runs on rank 1 and the reader on
//! rank 2 (both on rank 1 with two ranks, on rank 0 alone). Expected output:
//!
//! ```text
//! reader (rank R): 0
//! ...
//! reader (rank R): 9
//! result: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
//! ```
use ranks::Queue;

const MAX_COUNT: u32 = 10;

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
    let shared_q: Queue<u32> = Queue::new(&world, 0, 0)?;
    if worker_rank(0, n) == me {
        for i in 0..MAX_COUNT {
            shared_q.put(&i)?;
        }
        println!("writer (rank {me}): put 0..{} on the queue", MAX_COUNT - 1);
    }
    if worker_rank(1, n) == me {
        let mut got = Vec::new();
        for _ in 0..MAX_COUNT {
            let v = shared_q.get()?;
            println!("reader (rank {me}): {v}");
            got.push(v);
        }
        println!("result: {got:?}");
    }
    world.barrier()
}
