//! Lesson program 10, "manager list and dict" (lesson 5, Manager() Example 1): each worker
//! appends its name to a shared list and stores name -> length of the list in a shared
//! dict.
//!
//! The manager lives on rank 0 (the main process); every other rank is a worker named
//! `Process-R` (so `-n 4` gives the lesson's 3 workers; rank 0 works alone in a world of
//! one). The length stored is the list's length right after this worker's append. Expected
//! output with W workers:
//!
//! ```text
//! Shared list: ['Process-2', 'Process-1', ...]
//! Shared dict: {'Process-2': 1, 'Process-1': 2, ...}
//! result: list of W names, dict of W entries
//! ```
use ranks::{Dict, List, Manager};

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let manager = Manager::new(&world, 0)?;
    let shared_list: List<String> = manager.list()?;
    let shared_dict: Dict<String, usize> = manager.dict()?;
    let is_worker = n == 1 || me != 0;
    let workers = if n == 1 { 1 } else { n - 1 };
    if is_worker {
        let name = format!("Process-{me}");
        let index = shared_list.append(&name)?;
        shared_dict.set(&name, &(index + 1))?;
    }
    world.barrier()?;
    if me == 0 {
        let names = shared_list.snapshot()?;
        let items = shared_dict.items()?;
        let list_text: Vec<String> = names.iter().map(|s| format!("'{s}'")).collect();
        let dict_text: Vec<String> = items.iter().map(|(k, v)| format!("'{k}': {v}")).collect();
        println!("Shared list: [{}]", list_text.join(", "));
        println!("Shared dict: {{{}}}", dict_text.join(", "));
        let mut a = names.clone();
        a.sort();
        a.dedup();
        let mut b: Vec<String> = items.iter().map(|(k, _)| k.clone()).collect();
        b.sort();
        let mut lens: Vec<usize> = items.iter().map(|(_, v)| *v).collect();
        lens.sort_unstable();
        let consistent = a == b && a.len() == workers && lens == (1..=workers).collect::<Vec<_>>();
        println!(
            "result: list of {} names, dict of {} entries{}",
            names.len(),
            items.len(),
            if consistent { "" } else { " (INCONSISTENT)" }
        );
    }
    world.barrier()
}
