//! The primitives' service: any request bytes, as an envelope or as the arguments of any
//! operation on any kind of object (lock, semaphore, event, barrier, queue, dict, list),
//! are served or refused without a panic. Runs in a world of one rank.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Objects {
    world: ranks::Comm,
    count: u32,
    _keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

fn objects() -> &'static Objects {
    static OBJ: OnceLock<Objects> = OnceLock::new();
    OBJ.get_or_init(|| {
        let w = ranks::init().expect("a world of one");
        // Kept alive for the whole run; numbered 0.. in the order made.
        let made: Vec<Box<dyn std::any::Any + Send + Sync>> = vec![
            Box::new(ranks::Lock::new(&w, 0).unwrap()),
            Box::new(ranks::RLock::new(&w, 0).unwrap()),
            Box::new(ranks::Semaphore::new(&w, 0, 2).unwrap()),
            Box::new(ranks::Event::new(&w, 0).unwrap()),
            Box::new(ranks::Barrier::new(&w, 0, 1).unwrap()),
            Box::new(ranks::Queue::<u64>::new(&w, 0, 4).unwrap()),
        ];
        let mut made = made;
        let m = ranks::Manager::new(&w, 0).unwrap();
        made.push(Box::new(m.dict::<String, u64>().unwrap()));
        made.push(Box::new(m.list::<u64>().unwrap()));
        made.push(Box::new(m));
        let count = made.len() as u32 - 1;
        Objects {
            world: w,
            count,
            _keep: made,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let o = objects();
    match data {
        [0, rest @ ..] => ranks::primitives::serve_for_fuzzing(&o.world, None, rest),
        [_, obj, op, rest @ ..] => ranks::primitives::serve_for_fuzzing(
            &o.world,
            Some((u32::from(*obj) % o.count, *op)),
            rest,
        ),
        _ => {}
    }
});
