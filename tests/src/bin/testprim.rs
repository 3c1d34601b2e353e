//! Job programs for the multiprocessing-style primitives: `ranks-testprim SCENARIO [ARGS]`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use ranks::{
    Barrier, Comm, Condition, Error, Event, Lock, Manager, Pipe, Queue, RLock, Semaphore,
    SharedArray, SharedMemory, SharedValue,
};

type R = Result<(), Error>;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Rank 0 hosts a queue, makes a short call to it and then computes (no calls at all) until
/// rank 1 has taken an item from the queue, which only rank 0's service thread can hand out
/// meanwhile. Three rounds; a round whose item is not served within 30 s fails the job.
fn owner_computes(w: &Comm) -> R {
    let q: Queue<u64> = Queue::new(w, 0, 0)?;
    // Same host: rank 0 reads it from shared memory, without a call.
    let taken = SharedValue::new(w, 0, 0u64)?;
    for round in 1..=3u64 {
        w.barrier()?;
        match w.rank() {
            0 => {
                q.put(&round)?;
                let t0 = Instant::now();
                while taken.get()? != round {
                    if t0.elapsed() > Duration::from_secs(30) {
                        return Err(Error::Usage(format!(
                            "round {round}: rank 1's get was not served while rank 0 computed"
                        )));
                    }
                    std::hint::spin_loop();
                }
            }
            1 => {
                // Let rank 0 leave its call and start computing first.
                std::thread::sleep(Duration::from_millis(20));
                let v = q.get()?;
                assert_eq!(v, round);
                taken.set(round)?;
            }
            _ => {}
        }
    }
    w.barrier()?;
    if w.rank() == 0 {
        println!("owner computes ok");
    }
    Ok(())
}

/// Half the ranks produce, half consume, through one queue hosted by rank 0.
fn queue_mpmc(w: &Comm) -> R {
    let total = arg(2, 100_000);
    let (n, me) = (w.size(), w.rank());
    let q: Queue<(u32, u64)> = Queue::new(w, 0, 1000)?;
    let results: Queue<Vec<(u32, u64)>> = Queue::new(w, 0, 0)?;
    let producers: Vec<usize> = (0..n).filter(|r| r % 2 == 0).collect();
    let consumers: Vec<usize> = (0..n).filter(|r| r % 2 == 1).collect();
    let consumers = if consumers.is_empty() {
        vec![0]
    } else {
        consumers
    };
    let np = producers.len() as u64;
    let nc = consumers.len() as u64;
    // Producer i puts share(i, np) items; consumer j takes share(j, nc): all `total` in all.
    let share = |i: u64, k: u64| total / k + u64::from(i < total % k);
    if let Some(i) = producers.iter().position(|&r| r == me) {
        for s in 0..share(i as u64, np) {
            q.put(&(me as u32, s))?;
        }
    }
    if let Some(j) = consumers.iter().position(|&r| r == me) {
        let quota = share(j as u64, nc);
        let mut got = Vec::with_capacity(quota as usize);
        for _ in 0..quota {
            got.push(q.get()?);
        }
        // Items of one producer arrive in the order it put them.
        let mut last = std::collections::HashMap::new();
        for &(p, s) in &got {
            if let Some(prev) = last.insert(p, s) {
                assert!(s > prev, "producer {p}: item {s} after {prev}");
            }
        }
        results.put(&got)?;
    }
    if me == 0 {
        let mut all = Vec::new();
        for _ in 0..consumers.len() {
            all.extend(results.get()?);
        }
        assert_eq!(all.len() as u64, total, "lost items");
        let set: HashSet<(u32, u64)> = all.iter().copied().collect();
        assert_eq!(set.len(), all.len(), "duplicated items");
        // FIFO per producer as seen by each consumer: within one consumer's list, a
        // producer's sequence numbers increase.
        assert!(q.try_get().is_err());
        println!(
            "queue ok {} items, {} producers, {} consumers",
            all.len(),
            producers.len(),
            consumers.len()
        );
    }
    w.barrier()
}

fn queue_semantics(w: &Comm) -> R {
    let q: Queue<String> = Queue::new(w, w.size() - 1, 2)?;
    if w.rank() == 0 {
        assert!(matches!(q.try_get(), Err(Error::Empty)));
        let t = Instant::now();
        assert!(matches!(
            q.get_timeout(Duration::from_millis(100)),
            Err(Error::Empty)
        ));
        assert!(t.elapsed() >= Duration::from_millis(90));
        q.put(&"a".into())?;
        q.put(&"b".into())?;
        assert!(q.full()?);
        assert!(matches!(q.try_put(&"c".into()), Err(Error::Full)));
        assert!(matches!(
            q.put_timeout(&"c".into(), Duration::from_millis(50)),
            Err(Error::Full)
        ));
        assert_eq!(q.qsize()?, 2);
        assert_eq!(q.get()?, "a");
        assert_eq!(q.get()?, "b");
        assert!(q.empty()?);
        q.put(&"last".into())?;
        q.close()?;
        assert!(matches!(q.put(&"x".into()), Err(Error::Closed(_))));
        assert_eq!(q.get()?, "last");
        assert!(matches!(q.get(), Err(Error::Closed(_))));
        println!("queue semantics ok");
    }
    w.barrier()
}

/// Every rank adds 1 ITER times with fetch_add and LOCKED times (default ITER) with
/// with_lock.
fn counter(w: &Comm) -> R {
    let iters = arg(2, 10_000);
    let locked_iters = arg(3, iters);
    let atomic = SharedValue::<u64>::new(w, 0, 0)?;
    let locked = SharedValue::<i64>::new(w, 0, 0)?;
    let managed = Manager::new(w, 0)?.namespace()?;
    for _ in 0..iters {
        atomic.fetch_add(1)?;
    }
    for _ in 0..locked_iters {
        locked.with_lock(|v| *v += 1)?;
    }
    for _ in 0..10 {
        managed.update::<u64>("count", |c| c.unwrap_or(0) + 1)?;
    }
    w.barrier()?;
    let n = w.size() as u64;
    assert_eq!(atomic.get()?, iters * n);
    assert_eq!(locked.get()? as u64, locked_iters * n);
    assert_eq!(managed.get::<u64>("count")?, Some(10 * n));
    if w.rank() == 0 {
        println!("counter ok {} {}", atomic.get()?, locked.get()?);
    }
    w.barrier()
}

/// Locks, semaphores, conditions, events, barriers.
fn sync(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    let lock = Lock::new(w, 0)?;
    let inside = SharedValue::<u32>::new(w, 0, 0)?;
    for _ in 0..20 {
        let g = lock.acquire()?;
        assert_eq!(inside.fetch_add(1)?, 0, "two ranks inside the lock");
        std::thread::sleep(Duration::from_micros(50));
        inside.fetch_add(u32::MAX)?; // -1
        drop(g);
    }
    w.barrier()?;
    // A plain lock is not re-entrant; an RLock is.
    let rl = RLock::new(w, n - 1)?;
    {
        let _a = rl.acquire()?;
        let _b = rl.acquire()?;
    }
    if me == 0 {
        let g = lock.acquire()?;
        assert!(matches!(lock.acquire(), Err(Error::Usage(_))));
        drop(g);
    }
    w.barrier()?;
    // A semaphore of 2 never lets 3 in.
    let sem = Semaphore::bounded(w, 0, 2)?;
    let count = SharedValue::<u32>::new(w, 0, 0)?;
    for _ in 0..10 {
        sem.acquire()?;
        assert!(count.fetch_add(1)? < 2);
        std::thread::sleep(Duration::from_micros(100));
        count.fetch_add(u32::MAX)?;
        sem.release()?;
    }
    w.barrier()?;
    if me == 0 {
        assert!(matches!(sem.release(), Err(Error::Usage(_))));
    }
    // Event: rank 0 sets it after everyone is waiting or about to.
    let ev = Event::new(w, 0)?;
    if me == 0 {
        assert!(!ev.wait_timeout(Some(Duration::from_millis(20)))?);
        std::thread::sleep(Duration::from_millis(50));
        ev.set()?;
    } else {
        ev.wait()?;
    }
    assert!(ev.is_set()?);
    w.barrier()?;
    // Condition: rank 0 produces a value; the others wait_for it.
    let cond = Condition::new(w, 0)?;
    let value = SharedValue::<u64>::new(w, 0, 0)?;
    if me == 0 {
        std::thread::sleep(Duration::from_millis(50));
        let g = cond.acquire()?;
        value.set(42)?;
        cond.notify_all(&g)?;
        drop(g);
    } else {
        let g = cond.acquire()?;
        assert!(cond.wait_for(
            &g,
            || value.get().is_ok_and(|v| v == 42),
            Some(Duration::from_secs(30))
        )?);
        drop(g);
    }
    // A timed wait that nobody notifies.
    {
        let g = cond.acquire()?;
        assert!(!cond.wait_timeout(&g, Some(Duration::from_millis(20)))?);
    }
    w.barrier()?;
    // Barrier objects are reusable; indices are distinct.
    let bar = Barrier::new(w, n - 1, n)?;
    for _ in 0..3 {
        let i = bar.wait()?;
        assert!(i < n);
        let all = w.all_gather(&i)?;
        let set: HashSet<usize> = all.into_iter().collect();
        assert_eq!(set.len(), n, "barrier indices must differ");
    }
    // A barrier that times out is broken for everyone.
    let lonely = Barrier::new(w, 0, n + 1)?;
    if me == 0 {
        assert!(matches!(
            lonely.wait_timeout(Some(Duration::from_millis(50))),
            Err(Error::BrokenBarrier(_))
        ));
        assert!(matches!(lonely.wait(), Err(Error::BrokenBarrier(_))));
        lonely.reset()?;
        lonely.abort()?;
        assert!(matches!(lonely.wait(), Err(Error::BrokenBarrier(_))));
    }
    w.barrier()?;
    if me == 0 {
        println!("sync ok");
    }
    Ok(())
}

/// A rank dies holding a lock; the waiter is told.
fn lock_holder_dies(w: &Comm) -> R {
    let lock = Lock::new(w, 0)?;
    w.barrier()?;
    if w.rank() == 1 {
        let _g = lock.acquire()?;
        w.barrier()?;
        std::thread::sleep(Duration::from_millis(100));
        // Die holding it.
        let me = rustix::process::getpid();
        rustix::process::kill_process(me, rustix::process::Signal::KILL).ok();
        unreachable!();
    }
    w.barrier()?;
    if w.rank() == 2 % w.size() {
        match lock.acquire() {
            Err(e @ Error::HolderDied { rank: 1, .. }) => println!("holder died: {e}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("got a lock whose holder died"),
        }
        // The lock is usable again.
        lock.acquire()?.release()?;
        println!("lock recovered");
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// The holder of a lock exits normally (code 0) while holding it; the lock's owner (rank 0)
/// is the one waiting to acquire it, and another rank (2) waits too.
fn lock_holder_exits(w: &Comm) -> R {
    let lock = Lock::new(w, 0)?;
    w.barrier()?;
    if w.rank() == 1 {
        let g = lock.acquire()?;
        w.barrier()?;
        std::thread::sleep(Duration::from_millis(100));
        std::mem::forget(g); // exit holding it
        std::process::exit(0);
    }
    w.barrier()?;
    let t0 = std::time::Instant::now();
    match lock.acquire() {
        Err(e @ Error::HolderDied { rank: 1, .. }) => {
            println!(
                "rank {}: holder died: {e} after {:?}",
                w.rank(),
                t0.elapsed()
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("got a lock whose holder died"),
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// A barrier for every rank, owned by rank 0; rank ARG (default 2) exits before arriving.
fn barrier_party_exits(w: &Comm) -> R {
    let quitter = arg(2, 2) as usize;
    let b = ranks::Barrier::new(w, 0, w.size())?;
    w.barrier()?;
    if w.rank() == quitter {
        std::process::exit(0);
    }
    match b.wait() {
        Err(Error::BrokenBarrier(why)) => println!("rank {}: barrier broken: {why}", w.rank()),
        // The owner itself left: its objects are gone with it.
        Err(e @ Error::PeerLost { .. }) if quitter == 0 => {
            println!("rank {}: barrier owner gone: {e}", w.rank())
        }
        other => panic!("expected a broken barrier, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Pipes: duplex echo, one-way, end of stream.
fn pipes(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    let p: Option<Pipe<String>> = Pipe::new(w, 0, n - 1, true)?;
    let one: Option<Pipe<u32>> = Pipe::new(w, n - 1, 0, false)?;
    if me == 0 {
        let mut p = p.unwrap();
        for s in ["hello", "are you there?", "END"] {
            p.send(&s.to_string())?;
            assert_eq!(p.recv()?, format!("echo {s}"));
        }
        assert!(!p.poll(Duration::from_millis(20))?, "nothing is pending");
        p.close()?;
        assert!(matches!(p.send(&"late".to_string()), Err(Error::Closed(_))));
        let mut one = one.unwrap();
        assert!(matches!(one.send(&1), Err(Error::Usage(_))));
        let mut got = Vec::new();
        loop {
            match one.recv() {
                Ok(v) => got.push(v),
                Err(Error::EndOfStream) => break,
                Err(e) => return Err(e),
            }
        }
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert!(matches!(one.recv(), Err(Error::EndOfStream)));
        println!("pipes ok");
    } else if me == n - 1 {
        let mut p = p.unwrap();
        loop {
            assert!(p.poll(Duration::from_secs(30))?);
            match p.recv() {
                Ok(s) => p.send(&format!("echo {s}"))?,
                Err(Error::EndOfStream) => break,
                Err(e) => return Err(e),
            }
        }
        let one = one.unwrap();
        for i in 0..100 {
            one.send(&i)?;
        }
        // Closed by dropping it, as a `with` block would: the reader sees its end, not a
        // type mismatch (the close frame once went as `Frame<()>`).
        drop(one);
    }
    w.barrier()
}

/// Shared numbers owned by the last rank, so that across hosts some ranks map them and the
/// others go through the owner: every operation, mixed; then `SharedMemory`, which stays on
/// its host (attaching elsewhere is a clear error).
fn shared_across(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    let owner = n - 1;
    let v = SharedValue::<i64>::new(w, owner, -5)?;
    let slots = SharedArray::<u32>::new(w, owner, &vec![0; n])?;
    let hits = SharedArray::<u64>::new(w, owner, &[0, 0])?;
    let claim = SharedValue::<u64>::new(w, owner, u64::MAX)?;
    let f = SharedArray::<f64>::new(w, owner, &[0.5; 3])?;
    assert_eq!(v.get()?, -5);
    w.barrier()?;
    assert_eq!(slots.len(), n);
    slots.set(me, me as u32 + 1)?;
    assert_eq!(slots.get(me)?, me as u32 + 1);
    assert!(matches!(slots.get(n), Err(Error::InvalidArgument(_))));
    hits.fetch_add(0, 1)?;
    hits.fetch_add(1, me as u64)?;
    v.fetch_add(1)?;
    let won = claim.compare_exchange(u64::MAX, me as u64)?.is_ok();
    let mut winners = [0u64];
    w.all_reduce_slice(&[u64::from(won)], &mut winners, &ranks::op::Sum)?;
    let winners = winners[0];
    f.with_lock(|a| a.iter_mut().for_each(|x| *x += 1.0))?;
    w.barrier()?;
    let want: Vec<u32> = (1..=n as u32).collect();
    assert_eq!(slots.to_vec()?, want);
    assert_eq!(hits.to_vec()?, [n as u64, (n * (n - 1) / 2) as u64]);
    assert_eq!(v.get()?, n as i64 - 5);
    assert_eq!(winners, 1);
    let winner = claim.get()?;
    assert!(winner < n as u64);
    assert_eq!(claim.compare_exchange(u64::MAX, 0)?, Err(winner));
    assert_eq!(f.to_vec()?, vec![0.5 + n as f64; 3]);
    w.barrier()?;

    // Raw blocks are per host.
    let mut owner_host = w.host().to_string();
    w.broadcast(owner, &mut owner_host)?;
    let block = if me == owner {
        Some(SharedMemory::create("across", 8)?)
    } else {
        None
    };
    w.barrier()?;
    if me != owner {
        match SharedMemory::attach("across", Duration::from_millis(300)) {
            Ok(_) => assert_eq!(owner_host, w.host(), "attached on another host"),
            Err(e) => {
                assert_ne!(owner_host, w.host(), "{e}");
                assert!(
                    e.to_string().contains("shared by the ranks of one host"),
                    "{e}"
                );
            }
        }
    }
    w.barrier()?;
    drop(block);
    if me == 0 {
        println!("shared across ok on {n} ranks");
    }
    Ok(())
}

/// Manager dict and list, shared arrays and raw shared memory.
fn shared_state(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    let m = Manager::new(w, 0)?;
    let zeros = m.list_from(&[0u32, 0, 0])?;
    zeros.update(me % 3, |v| v + 1)?;
    let d = m.dict::<String, usize>()?;
    let l = m.list::<String>()?;
    let name = format!("worker-{me}");
    l.append(&name)?;
    d.set(&name, &name.len())?;
    d.update(&"total".to_string(), |v| v.unwrap_or(0) + 1)?;
    let arr = SharedArray::<f64>::new(w, 0, &[1.0, 2.5, 3.0])?;
    arr.with_lock(|a| a.iter_mut().for_each(|x| *x += 1.0))?;
    let ints = SharedArray::<i32>::new(w, 0, &[0; 8])?;
    ints.fetch_add(me % 8, 1)?;
    let shm = if me == 0 {
        Some(SharedMemory::create("block", 16)?)
    } else {
        None
    };
    w.barrier()?;
    let block = SharedMemory::attach("block", Duration::from_secs(10))?;
    block.write(me % 16, &[me as u8 + 1])?;
    w.barrier()?;
    assert_eq!(l.len()?, n);
    assert_eq!(zeros.snapshot()?.iter().sum::<u32>(), n as u32);
    let mut names = l.snapshot()?;
    names.sort();
    let mut want: Vec<String> = (0..n).map(|r| format!("worker-{r}")).collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(d.len()?, n + 1);
    assert_eq!(d.get(&"total".to_string())?, Some(n));
    assert_eq!(
        arr.to_vec()?,
        vec![1.0 + n as f64, 2.5 + n as f64, 3.0 + n as f64]
    );
    assert_eq!(ints.to_vec()?.iter().sum::<i32>(), n as i32);
    let bytes = block.to_vec();
    assert!(bytes.iter().take(n.min(16)).all(|&b| b != 0));
    w.barrier()?;
    drop(shm);
    if me == 0 {
        println!("shared state ok");
    }
    Ok(())
}

/// A Pool whose worker is SIGKILLed in the middle of item 5: that item fails with
/// `TaskFailed` naming it and the worker, every other item completes.
/// A `Pool::map` of 60 items of 20 ms each, for `--progress`.
fn poolprogress(w: &Comm) -> R {
    let work = |x: u64| -> u64 {
        std::thread::sleep(Duration::from_millis(20));
        x + 1
    };
    let Some(pool) = ranks::Pool::new(w, 0, work)? else {
        return Ok(());
    };
    let out = pool.map((0..60).collect())?;
    assert_eq!(out, (1..=60).collect::<Vec<u64>>());
    let sum: u64 = pool
        .imap((0..10).collect(), Some(1))?
        .map(|r| r.unwrap())
        .sum();
    assert_eq!(sum, 55);
    println!("pool progress ok");
    Ok(())
}

fn poolworkerdies(w: &Comm) -> R {
    let work = |x: u64| -> u64 {
        if x == 5 {
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            std::thread::sleep(Duration::from_secs(10));
        }
        std::thread::sleep(Duration::from_millis(20));
        x * 10
    };
    let Some(pool) = ranks::Pool::new(w, 0, work)? else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for (i, r) in pool.imap((0..20).collect(), Some(1))?.enumerate() {
        match r {
            Ok(v) => assert_eq!(v, i as u64 * 10),
            Err(ranks::Error::TaskFailed {
                item,
                rank,
                message,
            }) => {
                println!("pool item {item} failed on rank {rank}: {message}");
                failed.push(item);
            }
            Err(e) => return Err(e),
        }
    }
    assert_eq!(failed, vec![5], "only the item the worker died on fails");
    println!("pool worker death ok");
    Ok(())
}

/// Pool: map, imap, imap_unordered, apply_async with callbacks, a panicking task, and
/// items of very unequal cost.
fn pool(w: &Comm) -> R {
    use std::sync::{Arc, Mutex};
    let work = |x: u64| -> u64 {
        if x == 777 {
            panic!("unlucky item {x}");
        }
        if (1000..2000).contains(&x) {
            // Costly items: x - 1000 milliseconds.
            std::thread::sleep(Duration::from_millis(x - 1000));
        }
        x * x
    };
    let Some(mut pool) = ranks::Pool::new(w, 0, work)? else {
        return Ok(()); // a worker: served until the root closed the pool
    };
    assert_eq!(pool.map((1..=5).collect())?, vec![1, 4, 9, 16, 25]);
    let got: Vec<u64> = pool
        .imap((0..100).collect(), Some(3))?
        .collect::<Result<_, _>>()?;
    assert_eq!(got, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
    let mut un: Vec<u64> = pool
        .imap_unordered((20..60).collect(), Some(1))?
        .collect::<Result<_, _>>()?;
    un.sort();
    assert_eq!(un, (20..60u64).map(|x| x * x).collect::<Vec<_>>());
    // A task that panics is an error naming the item; the pool keeps working.
    match pool.map(vec![12, 777, 14]) {
        Err(Error::TaskFailed {
            item: 1, message, ..
        }) => assert!(message.contains("unlucky item 777"), "{message}"),
        other => panic!("expected a failed task, got {other:?}"),
    }
    assert_eq!(pool.map(vec![2, 3])?, vec![4, 9]);
    // apply_async with callbacks, submitted over time.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for x in 10000..10010u64 {
        let seen = seen.clone();
        handles.push(pool.apply_async(
            x,
            Some(Box::new(move |r: &u64| seen.lock().unwrap().push(*r))),
        )?);
        std::thread::sleep(Duration::from_millis(1));
    }
    let got: Vec<u64> = handles
        .into_iter()
        .map(|h| h.get())
        .collect::<Result<_, _>>()?;
    assert_eq!(got, (10000..10010u64).map(|x| x * x).collect::<Vec<_>>());
    // Unequal costs: one 400 ms item and many 10 ms items; with dynamic hand-out the total
    // is about max(400 ms, total / workers), not 400 ms + a share of the rest.
    let mut items = vec![1400u64];
    items.extend(std::iter::repeat_n(1010u64, 60));
    let t = Instant::now();
    let out = pool.map_chunked(items, Some(1))?;
    let took = t.elapsed();
    assert_eq!(out.len(), 61);
    let workers = pool.workers().max(1) as f64;
    let ideal = (0.4f64).max((0.4 + 0.6) / workers);
    println!(
        "pool unequal items: {:.3} s (ideal {:.3} s with {} workers)",
        took.as_secs_f64(),
        ideal,
        pool.workers()
    );
    pool.close();
    assert!(matches!(pool.map(vec![1]), Err(Error::Closed(_))));
    pool.join()?;
    let cb = seen.lock().unwrap().clone();
    assert_eq!(cb.len(), 10, "every callback ran");
    println!("pool ok with {} workers", pool.workers());
    Ok(())
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let w = ranks::init().expect("init");
    let r = match scenario.as_str() {
        "queue" => queue_mpmc(&w),
        "owner_computes" => owner_computes(&w),
        "queue_semantics" => queue_semantics(&w),
        "counter" => counter(&w),
        "sync" => sync(&w),
        "lockdies" => lock_holder_dies(&w),
        "lockexits" => lock_holder_exits(&w),
        "barrierexits" => barrier_party_exits(&w),
        "pipes" => pipes(&w),
        "shared" => shared_state(&w),
        "shared_across" => shared_across(&w),
        "pool" => pool(&w),
        "poolworkerdies" => poolworkerdies(&w),
        "poolprogress" => poolprogress(&w),
        other => {
            eprintln!("unknown scenario {other:?}");
            std::process::exit(64);
        }
    };
    if let Err(e) = r {
        eprintln!("rank {}: {e}", w.rank());
        std::process::exit(1);
    }
}
