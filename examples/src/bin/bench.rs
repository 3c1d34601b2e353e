//! OSU-style micro-benchmarks, same tests and output format as `../shared/bench/mpi_bench.c`
//! so figures can be compared line by line.
//!
//! Usage: `ranks run -n 2 bench latency|bw|phases [SIZE [ITERS]]|stream [MiB]|barrier|allreduce|pairs|queue|pipe|lock|pool|startup [none|ring|barrier|alltoall]|hello`
//! Prints `<test> <bytes> <value> <unit>` lines on rank 0.

use std::time::Instant;

use ranks::{Comm, Error};

fn latency(w: &Comm) -> Result<(), Error> {
    // `bench latency [FROM [TO [ITERS]]]`: sizes FROM..=TO bytes (default 1 B to 4 MiB);
    // ITERS round trips per size (default 20000 up to 8 KiB, 500 above).
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (from, to) = (arg(2, 1), arg(3, 4 << 20));
    let mut buf = vec![0u8; to.max(1)];
    let mut size = from.max(1);
    while size <= to {
        let iters = arg(4, if size <= 8192 { 20000 } else { 500 });
        let warm = iters / 10;
        let mut t0 = Instant::now();
        for i in 0..iters + warm {
            if i == warm {
                t0 = Instant::now();
            }
            match w.rank() {
                0 => {
                    w.send_slice(1, 1, &buf[..size])?;
                    w.recv_into(1, 1, &mut buf[..size])?;
                }
                1 => {
                    w.recv_into(0, 1, &mut buf[..size])?;
                    w.send_slice(0, 1, &buf[..size])?;
                }
                _ => {}
            }
        }
        if w.rank() == 0 {
            let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
            println!("latency {size} {us:.3} us");
        }
        size *= 4;
    }
    Ok(())
}

/// `bench bw`'s window taken apart: per message, the time each rank spends in each phase
/// of a window (the sender's sends, its wait for them, its wait for the acknowledgement;
/// the receiver's posting, its wait, its acknowledgement), for one size (argument 2,
/// default 8 bytes) over ITERS windows (argument 3, default 20000). Both ranks print
/// `phases RANK SIZE: total T ns, PHASE T ns ...`; the slower side is the one that waits
/// least. `BENCH_LATE_NS=N`: the receiver posts N ns after its acknowledgement, so that
/// every message of the window is there when it looks (the landing alone).
fn phases(w: &Comm) -> Result<(), Error> {
    const WINDOW: usize = 64;
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (size, iters) = (arg(2, 8).clamp(1, 1 << 16), arg(3, 20000));
    let late: u128 = std::env::var("BENCH_LATE_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Buffers of their own pages each, sliced as `bw` does.
    let mut bufs: Vec<Vec<u8>> = (0..WINDOW).map(|_| vec![1u8; size.max(4096)]).collect();
    let mut ack = [0u8; 1];
    let mut spent = [std::time::Duration::ZERO; 3];
    w.barrier()?;
    let start = Instant::now();
    for _ in 0..iters {
        let (t0, t1, t2) = match w.rank() {
            0 => {
                let t0 = Instant::now();
                let mut sends = Vec::with_capacity(WINDOW);
                for b in &bufs {
                    sends.push(w.isend_slice(1, 2, &b[..size])?);
                }
                let t1 = Instant::now();
                ranks::wait_all(sends)?;
                let t2 = Instant::now();
                w.recv_into(1, 3, &mut ack)?;
                (t0, t1, t2)
            }
            1 => {
                let acked = Instant::now();
                while acked.elapsed().as_nanos() < late {
                    std::hint::spin_loop();
                }
                let t0 = Instant::now();
                let mut recvs = Vec::with_capacity(WINDOW);
                for b in bufs.iter_mut() {
                    recvs.push(w.irecv_into(0, 2, &mut b[..size])?);
                }
                let t1 = Instant::now();
                ranks::wait_all(recvs)?;
                let t2 = Instant::now();
                w.send_slice(0, 3, &ack)?;
                (t0, t1, t2)
            }
            _ => break,
        };
        spent[0] += t1 - t0;
        spent[1] += t2 - t1;
        spent[2] += t2.elapsed();
    }
    let msgs = (iters * WINDOW) as f64;
    let ns = |d: std::time::Duration| d.as_secs_f64() * 1e9 / msgs;
    let names = if w.rank() == 0 {
        ["sending", "waiting for the sends", "waiting for the ack"]
    } else {
        ["posting", "waiting for the messages", "acknowledging"]
    };
    if w.rank() < 2 {
        println!(
            "phases {} {size}: total {:.1} ns, {} {:.1} ns, {} {:.1} ns, {} {:.1} ns",
            w.rank(),
            ns(start.elapsed()),
            names[0],
            ns(spent[0]),
            names[1],
            ns(spent[1]),
            names[2],
            ns(spent[2])
        );
    }
    Ok(())
}

/// Rank 0 streams MiB (argument 2, default 1024) to rank 1 as 1 MiB messages, one after the
/// other (blocking sends); rank 1 answers once it has everything.
/// What a rank costs once the job has started and talked in `pattern` (none, ring,
/// barrier, alltoall): each rank prints its peak resident memory (`rss RANK KIB`), so a
/// script can see how it grows with the job's size (`bench/startup.sh`).
fn startup(w: &Comm, pattern: &str) -> Result<(), Error> {
    let (me, n) = (w.rank(), w.size());
    match pattern {
        "none" => {}
        "ring" => {
            let (got, _): (u64, _) =
                w.sendrecv(&(me as u64), (me + 1) % n, 0, (me + n - 1) % n, 0)?;
            assert_eq!(got as usize, (me + n - 1) % n);
        }
        "barrier" => w.barrier()?,
        "alltoall" => {
            let out: Vec<u64> = (0..n as u64).collect();
            let back = w.all_to_all(out)?;
            assert_eq!(back, vec![me as u64; n]);
        }
        other => {
            eprintln!("unknown pattern {other:?}: none|ring|barrier|alltoall");
            std::process::exit(2);
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("rss {me} {kib}");
    Ok(())
}

/// Nonblocking collectives: one 8-byte all-reduce at a time (start, wait), then `n` in
/// flight at once and waited together, and likewise barriers; microseconds per operation.
fn nbc(w: &Comm) -> Result<(), Error> {
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    w.barrier()?;
    let t = Instant::now();
    for i in 0..n as u64 {
        w.iall_reduce(vec![i], ranks::op::Sum).wait()?;
    }
    let one = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    w.barrier()?;
    let t = Instant::now();
    let reqs: Vec<_> = (0..n as u64)
        .map(|i| w.iall_reduce(vec![i], ranks::op::Sum))
        .collect();
    ranks::wait_all(reqs)?;
    let many = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    w.barrier()?;
    let t = Instant::now();
    let reqs: Vec<_> = (0..n).map(|_| w.ibarrier()).collect();
    ranks::wait_all(reqs)?;
    let bars = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    if w.rank() == 0 {
        println!(
            "nbc {} ranks: iall_reduce 8 B one at a time {one:.1} us, {n} in flight {many:.1} us each; \
             {n} ibarriers in flight {bars:.1} us each",
            w.size()
        );
    }
    Ok(())
}

fn stream(w: &Comm) -> Result<(), Error> {
    let mib: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let mut buf = vec![7u8; 1 << 20];
    w.barrier()?;
    let t0 = Instant::now();
    match w.rank() {
        0 => {
            for _ in 0..mib {
                w.send_slice(1, 5, &buf)?;
            }
            w.recv_into(1, 6, &mut buf[..1])?;
            let secs = t0.elapsed().as_secs_f64();
            println!(
                "stream {} {:.1} MB/s",
                mib << 20,
                (mib << 20) as f64 / secs / 1e6
            );
        }
        1 => {
            for _ in 0..mib {
                w.recv_into(0, 5, &mut buf)?;
            }
            w.send_slice(0, 6, &buf[..1])?;
        }
        _ => {}
    }
    Ok(())
}

/// One-way time of a serde `u64` ping-pong (`send`/`recv`), microseconds.
fn serde_latency(w: &Comm) -> Result<(), Error> {
    let iters = 50_000;
    let mut t0 = Instant::now();
    for i in 0..iters + 5000u64 {
        if i == 5000 {
            t0 = Instant::now();
        }
        match w.rank() {
            0 => {
                w.send(1, 1, &i)?;
                let (v, _) = w.recv::<u64>(1, 1)?;
                assert_eq!(v, i);
            }
            1 => {
                let (v, _) = w.recv::<u64>(0, 1)?;
                w.send(0, 1, &v)?;
            }
            _ => {}
        }
    }
    if w.rank() == 0 {
        let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
        println!("serde latency u64 {us:.3} us");
    }
    Ok(())
}

fn bw(w: &Comm) -> Result<(), Error> {
    const WINDOW: usize = 64;
    // `BENCH_UNTOUCHED=1`: buffers never written before the run (fresh zero pages, like the
    // C reference's static arrays, whose sender reads all come from the kernel's one zero
    // page); by default every buffer holds data first.
    let untouched = std::env::var("BENCH_UNTOUCHED").is_ok_and(|v| v == "1");
    let mut bufs: Vec<Vec<u8>> = (0..WINDOW)
        .map(|_| vec![u8::from(!untouched); 1 << 20])
        .collect();
    let mut ack = [0u8; 1];
    // `bench bw [FROM [TO [ITERS]]]`: sizes FROM..=TO bytes (default 8 B to 256 KiB);
    // ITERS windows per size (default 2000 up to 64 KiB, 100 above).
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (from, to) = (arg(2, 8), arg(3, 1 << 18).min(1 << 20));
    let mut size = from.max(1);
    while size <= to {
        let iters = arg(4, if size <= 65536 { 2000 } else { 100 });
        let warm = 10;
        let mut t0 = Instant::now();
        for i in 0..iters + warm {
            if i == warm {
                t0 = Instant::now();
            }
            match w.rank() {
                // Each window's requests go into a vector of the window's size made at once,
                // as the C reference's request arrays are (collecting them instead grew the
                // vector by reallocation, about 100 instructions a message on each side).
                0 => {
                    let mut sends = Vec::with_capacity(WINDOW);
                    for b in &bufs {
                        sends.push(w.isend_slice(1, 2, &b[..size])?);
                    }
                    ranks::wait_all(sends)?;
                    w.recv_into(1, 3, &mut ack)?;
                }
                1 => {
                    let mut recvs = Vec::with_capacity(WINDOW);
                    for b in bufs.iter_mut() {
                        recvs.push(w.irecv_into(0, 2, &mut b[..size])?);
                    }
                    ranks::wait_all(recvs)?;
                    w.send_slice(0, 3, &ack)?;
                }
                _ => {}
            }
        }
        if w.rank() == 0 {
            let t = t0.elapsed().as_secs_f64();
            let mbs = (size * WINDOW * iters) as f64 / t / 1e6;
            println!("bw {size} {mbs:.1} MB/s");
        }
        size *= 8;
    }
    Ok(())
}

/// `barrier [ITERS]` (20,000 by default; fewer across hosts).
fn barrier(w: &Comm) -> Result<(), Error> {
    let iters: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000);
    for _ in 0..iters / 20 {
        w.barrier()?;
    }
    let t0 = Instant::now();
    for _ in 0..iters {
        w.barrier()?;
    }
    if w.rank() == 0 {
        println!(
            "barrier 0 {:.3} us",
            t0.elapsed().as_secs_f64() * 1e6 / iters as f64
        );
    }
    Ok(())
}

/// `allreduce [ITERS [MAX_BYTES]]`: ITERS (10,000 by default) for up to 32 KiB, ITERS / 200
/// above, sizes from 8 bytes up to MAX_BYTES (8 MiB by default).
fn allreduce(w: &Comm) -> Result<(), Error> {
    let small: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10000);
    let max: usize = std::env::args()
        .nth(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8 << 20);
    let input = vec![1.0f64; 1 << 20];
    let mut out = vec![0.0f64; 1 << 20];
    let mut n = 1;
    while n <= 1 << 20 && n * 8 <= max {
        let iters = if n <= 4096 {
            small
        } else {
            (small / 200).max(1)
        };
        for _ in 0..iters / 10 {
            w.all_reduce_slice(&input[..n], &mut out[..n], &ranks::op::Sum)?;
        }
        let t0 = Instant::now();
        for _ in 0..iters {
            w.all_reduce_slice(&input[..n], &mut out[..n], &ranks::op::Sum)?;
        }
        if w.rank() == 0 {
            let us = t0.elapsed().as_secs_f64() * 1e6 / iters as f64;
            println!("allreduce {} {us:.3} us", n * 8);
        }
        n *= 16;
    }
    Ok(())
}

/// Queue round trip, as `py_anchors.py queue`: rank 0 puts on one queue, rank 1 takes it
/// and puts it on another, rank 0 takes it back. Prints the one-way time (half a trip).
fn queue(w: &Comm) -> Result<(), Error> {
    const N: u64 = 20000;
    let qa: ranks::Queue<u64> = ranks::Queue::new(w, 1 % w.size(), 0)?;
    let qb: ranks::Queue<u64> = ranks::Queue::new(w, 0, 0)?;
    w.barrier()?;
    let t0 = Instant::now();
    match w.rank() {
        0 => {
            for i in 0..N {
                qa.put(&i)?;
                qb.get()?;
            }
            let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * N as f64);
            println!("queue latency {us:.2} us");
        }
        1 => {
            for _ in 0..N {
                let v = qa.get()?;
                qb.put(&v)?;
            }
        }
        _ => {}
    }
    w.barrier()
}

/// Pipe round trip, as `py_anchors.py pipe`.
fn pipe(w: &Comm) -> Result<(), Error> {
    const N: u64 = 20000;
    let p: Option<ranks::Pipe<u64>> = ranks::Pipe::new(w, 0, 1, true)?;
    if let Some(mut p) = p {
        let t0 = Instant::now();
        for i in 0..N {
            if w.rank() == 0 {
                p.send(&i)?;
                p.recv()?;
            } else {
                let v = p.recv()?;
                p.send(&v)?;
            }
        }
        if w.rank() == 0 {
            let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * N as f64);
            println!("pipe latency {us:.2} us");
        }
    }
    w.barrier()
}

/// Every rank acquires and releases one lock (hosted by rank 0) for a second.
fn lock(w: &Comm) -> Result<(), Error> {
    let lock = ranks::Lock::new(w, 0)?;
    w.barrier()?;
    let t0 = Instant::now();
    let mut pairs = 0u64;
    while t0.elapsed().as_secs_f64() < 1.0 {
        lock.acquire()?.release()?;
        pairs += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut total = [0u64];
    w.all_reduce_slice(&[pairs], &mut total, &ranks::op::Sum)?;
    if w.rank() == 0 {
        println!(
            "lock {} ranks {:.0} acquire/release pairs/s",
            w.size(),
            total[0] as f64 / secs
        );
    }
    Ok(())
}

/// The lesson's pool workload as `py_anchors.py pool`: sum_all_values over
/// 1_000_000..1_000_100 (the loop kept honest with black_box).
fn pool(w: &Comm) -> Result<(), Error> {
    fn sum_all_values(x: u64) -> u64 {
        let mut total = 0u64;
        for i in 1..=x {
            total = std::hint::black_box(total + i);
        }
        total
    }
    let t0 = Instant::now();
    if let Some(mut pool) = ranks::Pool::new(w, 0, sum_all_values)? {
        let out = pool.map((1_000_000..1_000_100).collect())?;
        let checksum: u64 = out.iter().sum();
        println!(
            "pool sum_all_values x100 checksum {checksum} in {:.3} s ({} workers)",
            t0.elapsed().as_secs_f64(),
            pool.workers()
        );
        pool.join()?;
    }
    Ok(())
}

/// Every pair (0,1), (2,3), ... ping-pongs 8 bytes at once; rank 0 prints the mean one-way
/// latency over the pairs.
fn pairs(w: &Comm) -> Result<(), Error> {
    let iters = 20000;
    let warm = 2000;
    let (me, n) = (w.rank(), w.size());
    let partner = me ^ 1;
    let mut buf = [0u8; 8];
    w.barrier()?;
    let mut t0 = Instant::now();
    if partner < n {
        for i in 0..iters + warm {
            if i == warm {
                t0 = Instant::now();
            }
            if me % 2 == 0 {
                w.send_slice(partner, 1, &buf)?;
                w.recv_into(partner, 1, &mut buf)?;
            } else {
                w.recv_into(partner, 1, &mut buf)?;
                w.send_slice(partner, 1, &buf)?;
            }
        }
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / (2.0 * iters as f64);
    if me == 0 {
        let mut all = vec![us];
        for r in (2..n).step_by(2) {
            all.push(w.recv::<f64>(r, 9)?.0);
        }
        let mean = all.iter().sum::<f64>() / all.len() as f64;
        println!("pairs 8 {mean:.3} us ({} pairs on {n} ranks)", all.len());
    } else if me % 2 == 0 {
        w.send(0, 9, &us)?;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let w = ranks::init()?;
    match std::env::args().nth(1).as_deref().unwrap_or("latency") {
        "latency" => latency(&w),
        "bw" => bw(&w),
        "phases" => phases(&w),
        "serde" => serde_latency(&w),
        "stream" => stream(&w),
        "barrier" => barrier(&w),
        "pairs" => pairs(&w),
        "allreduce" => allreduce(&w),
        "queue" => queue(&w),
        "pipe" => pipe(&w),
        "lock" => lock(&w),
        "pool" => pool(&w),
        "nbc" => nbc(&w),
        "startup" => startup(&w, std::env::args().nth(2).as_deref().unwrap_or("none")),
        "hello" => {
            if w.rank() == 0 {
                println!("hello {}", w.size());
            }
            Ok(())
        }
        other => {
            eprintln!("unknown benchmark {other:?}: latency|bw|phases [SIZE [ITERS]]|stream [MiB]|barrier|allreduce|pairs|queue|pipe|lock|pool|startup [none|ring|barrier|alltoall]|hello");
            std::process::exit(2);
        }
    }
}
