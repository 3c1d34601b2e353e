//! Lesson program 2, "process list" (lesson 5, Process Example 2): a list of worker
//! processes that print their id and pid when they start and when they finish.
//!
//! Every rank is a worker; rank 0 is also the main process, which gathers the pids at the
//! end and checks that they are distinct. Expected output of `ranks run -n N`:
//!
//! ```text
//! worker I (pid P) starting, name: Process I+1      (N lines, one per rank)
//! worker I (pid P) finishing, name: Process I+1     (N lines)
//! result: N workers, N distinct pids                (rank 0)
//! ```
use std::collections::BTreeSet;
use std::time::Duration;

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let pid = std::process::id();
    if me == 0 {
        println!("main process (pid {pid}) starting {n} workers");
    }
    println!("worker {me} (pid {pid}) starting, name: Process {}", me + 1);
    // The lesson's worker sleeps 2 s; a few milliseconds show the same overlap.
    std::thread::sleep(Duration::from_millis(5));
    println!(
        "worker {me} (pid {pid}) finishing, name: Process {}",
        me + 1
    );
    if let Some(pids) = world.gather(0, &pid)? {
        let distinct: BTreeSet<u32> = pids.iter().copied().collect();
        println!("pids by rank: {pids:?}");
        println!("result: {n} workers, {} distinct pids", distinct.len());
        println!("main process finishing");
    }
    world.barrier()
}
