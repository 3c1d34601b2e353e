//! Lesson program 5, "workers take items from a queue until a sentinel" (lesson 5, Queue
//! Example): main puts 0..9 on a queue and then one stop value per worker; each worker
//! processes items until it gets its stop value.
//!
//! Rank 0 is the main process and hosts the queue; every other rank is a worker (so
//! `-n 4` gives the lesson's 3 workers). Needs at least 2 ranks. Expected output:
//!
//! ```text
//! Worker R: Processing I          (10 lines in all, each item once)
//! Worker R: Exiting               (one per worker)
//! result: items [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] each processed exactly once; W of W workers exited
//! ```
use std::time::Duration;

use ranks::Queue;

const ITEMS: u32 = 10;

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        eprintln!("lesson05_queue_workers needs at least 2 ranks (main and a worker)");
        std::process::exit(2);
    }
    let workers = n - 1;
    let q: Queue<Option<u32>> = Queue::new(&world, 0, 0)?;
    let mut processed: Vec<u32> = Vec::new();
    let mut exited = false;
    if me == 0 {
        for i in 0..ITEMS {
            q.put(&Some(i))?;
        }
        // One stop value for each worker.
        for _ in 0..workers {
            q.put(&None)?;
        }
    } else {
        while let Some(item) = q.get()? {
            println!("Worker {me}: Processing {item}");
            processed.push(item);
            std::thread::sleep(Duration::from_millis(2));
        }
        println!("Worker {me}: Exiting");
        exited = true;
    }
    if let Some(all) = world.gather(0, &(processed, exited))? {
        let mut items: Vec<u32> = Vec::new();
        for (r, (got, _)) in all.iter().enumerate().skip(1) {
            println!("worker {r} processed {got:?}");
            items.extend(got);
        }
        let done = all.iter().skip(1).filter(|(_, e)| *e).count();
        items.sort_unstable();
        let once = items == (0..ITEMS).collect::<Vec<_>>();
        if once {
            println!(
                "result: items {items:?} each processed exactly once; {done} of {workers} workers exited"
            );
        } else {
            println!("result: WRONG items {items:?}; {done} of {workers} workers exited");
        }
        println!("All tasks completed");
    }
    world.barrier()
}
