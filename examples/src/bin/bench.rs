//! OSU-style micro-benchmarks, same tests and output format as `../shared/bench/mpi_bench.c`
//! so figures can be compared line by line.
//!
//! Usage: `ranks run -n 2 bench latency|bw|barrier|allreduce|pairs|hello`
//! Prints `<test> <bytes> <value> <unit>` lines on rank 0.

use std::time::Instant;

use ranks::{Comm, Error};

fn latency(w: &Comm) -> Result<(), Error> {
    let mut buf = vec![0u8; 4 << 20];
    let mut size = 1;
    while size <= 4 << 20 {
        let iters = if size <= 8192 { 20000 } else { 500 };
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

fn bw(w: &Comm) -> Result<(), Error> {
    const WINDOW: usize = 64;
    let mut bufs: Vec<Vec<u8>> = (0..WINDOW).map(|_| vec![1u8; 1 << 20]).collect();
    let mut ack = [0u8; 1];
    let mut size = 8;
    while size <= 1 << 20 {
        let iters = if size <= 65536 { 2000 } else { 100 };
        let warm = 10;
        let mut t0 = Instant::now();
        for i in 0..iters + warm {
            if i == warm {
                t0 = Instant::now();
            }
            match w.rank() {
                0 => {
                    let reqs = bufs
                        .iter()
                        .map(|b| w.isend_slice(1, 2, &b[..size]))
                        .collect::<Result<Vec<_>, _>>()?;
                    ranks::wait_all(reqs)?;
                    w.recv_into(1, 3, &mut ack)?;
                }
                1 => {
                    let reqs = bufs
                        .iter_mut()
                        .map(|b| w.irecv_into(0, 2, &mut b[..size]))
                        .collect::<Result<Vec<_>, _>>()?;
                    ranks::wait_all(reqs)?;
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

fn barrier(w: &Comm) -> Result<(), Error> {
    let iters = 20000;
    for _ in 0..1000 {
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

fn allreduce(w: &Comm) -> Result<(), Error> {
    let input = vec![1.0f64; 1 << 20];
    let mut out = vec![0.0f64; 1 << 20];
    let mut n = 1;
    while n <= 1 << 20 {
        let iters = if n <= 4096 { 10000 } else { 50 };
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
        "barrier" => barrier(&w),
        "pairs" => pairs(&w),
        "allreduce" => allreduce(&w),
        "hello" => {
            if w.rank() == 0 {
                println!("hello {}", w.size());
            }
            Ok(())
        }
        other => {
            eprintln!("unknown benchmark {other:?}: latency|bw|barrier|allreduce|pairs|hello");
            std::process::exit(2);
        }
    }
}
