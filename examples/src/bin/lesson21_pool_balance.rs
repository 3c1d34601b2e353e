//! Lesson program 21, "pool map with 2 and 4 workers" (lesson 5, Process Pool and Map()):
//! a pool of 2 maps `func` over five names, then pools of 2 and of 4 map `add_two_numbers`
//! over seven pairs; each task sleeps a little so the load spreads over the workers.
//!
//! Rank 0 is the main process and every pool's root; a pool of K workers uses ranks 1..=K
//! (fewer when the job is smaller: use 5 ranks or more for the pool of 4). Each task returns
//! the rank that ran it, so main can show how the items were spread. Expected output:
//!
//! ```text
//! result: names with 2 workers: 5 items, each processed once, by 2 workers
//! result: pairs with 2 workers: 7 items, each processed once, by 2 workers
//! result: pairs with 4 workers: 7 items, each processed once, by 4 workers
//! ```
//! (with fewer ranks the pool sizes shrink to the ranks there are).
use std::collections::BTreeMap;
use std::time::Duration;

use ranks::{Comm, Pool};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The lesson sleeps 0.5 s per item; 50 ms is enough to keep every worker busy.
const TASK_SLEEP: Duration = Duration::from_millis(50);

/// Run `items` through a pool of up to `size` workers on ranks 1..=size of `world`, each
/// item with `f`, which returns what it printed. Collective over `world`.
fn run_pool<I, F>(world: &Comm, what: &str, size: usize, items: Vec<I>, f: F) -> ranks::Result<()>
where
    I: Serialize + DeserializeOwned + Send + 'static,
    F: Fn(I) -> String + Send + Sync + 'static,
{
    let workers = size.min(world.size() - 1);
    let members: Vec<usize> = (0..=workers).collect();
    let me = world.rank();
    // Every task reports which rank ran it.
    let task = move |item: I| (f(item), me);
    let Some(sub) = world.subgroup(&members)? else {
        return Ok(());
    };
    let Some(mut pool) = Pool::new(&sub, 0, task)? else {
        return Ok(());
    };
    let n = items.len();
    let out = pool.map_chunked(items, Some(1))?;
    pool.close();
    pool.join()?;
    let mut per_rank: BTreeMap<usize, usize> = BTreeMap::new();
    let mut lines: Vec<String> = Vec::new();
    for (line, rank) in out {
        *per_rank.entry(rank).or_default() += 1;
        lines.push(line);
    }
    let mut unique = lines.clone();
    unique.sort();
    unique.dedup();
    let once = lines.len() == n && unique.len() == n;
    println!("{what} with {workers} workers: items per rank {per_rank:?}");
    println!(
        "result: {what} with {workers} workers: {} items, {}, by {} workers",
        lines.len(),
        if once {
            "each processed once"
        } else {
            "NOT each processed once"
        },
        per_rank.len()
    );
    Ok(())
}

fn func(name: String) -> String {
    std::thread::sleep(TASK_SLEEP);
    let line = format!("{name}, {}", std::process::id());
    println!("{line}");
    line
}

fn add_two_numbers(values: (i64, i64)) -> String {
    std::thread::sleep(TASK_SLEEP);
    let (number1, number2) = values;
    let line = format!(
        "PID = {}: {number1} + {number2} = {}",
        std::process::id(),
        number1 + number2
    );
    println!("{line}");
    line
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    if world.size() < 2 {
        eprintln!("lesson21_pool_balance needs at least 2 ranks (main and a worker)");
        std::process::exit(2);
    }
    let names: Vec<String> = ["John", "Mary", "April", "Murry", "George"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let numbers: Vec<(i64, i64)> = vec![
        (1, 2),
        (11, 52),
        (12, 62),
        (13, 72),
        (1312, 2272),
        (1332, 732),
        (13434, -23272),
    ];
    if world.rank() == 0 {
        println!("Numbers list: {numbers:?}");
    }
    run_pool(&world, "names", 2, names, func)?;
    run_pool(&world, "pairs", 2, numbers.clone(), add_two_numbers)?;
    run_pool(&world, "pairs", 4, numbers, add_two_numbers)?;
    world.barrier()
}
