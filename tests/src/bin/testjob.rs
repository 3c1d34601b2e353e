//! Job programs for the integration tests: `ranks-testjob SCENARIO [ARGS]`.
//! Each prints what it checked; a failed check panics (non-zero exit).

use ranks::{Comm, Error, ANY_SOURCE, ANY_TAG};
use serde::{Deserialize, Serialize};

type R = Result<(), Error>;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// 100k (or ARG) messages from 0 to 1, checked in order.
fn order(w: &Comm) -> R {
    let count = arg(2, 100_000);
    match w.rank() {
        0 => {
            for i in 0..count {
                w.send(1, 0, &i)?;
            }
        }
        1 => {
            for i in 0..count {
                let (v, st) = w.recv::<u64>(0, 0)?;
                assert_eq!(v, i, "message {i} out of order");
                assert_eq!((st.source, st.tag), (0, 0));
            }
            println!("order ok {count}");
        }
        _ => {}
    }
    Ok(())
}

#[derive(Serialize, Deserialize, Debug)]
struct Stamp {
    from: usize,
    seq: u64,
}

/// Every rank but 0 sends ARG messages to 0, which receives from ANY_SOURCE.
fn fanin(w: &Comm) -> R {
    let count = arg(2, 10_000);
    if w.rank() == 0 {
        let mut next = vec![0u64; w.size()];
        for _ in 0..count * (w.size() as u64 - 1) {
            let (s, st) = w.recv::<Stamp>(ANY_SOURCE, ANY_TAG)?;
            assert_eq!(s.from, st.source);
            assert_eq!(st.tag as usize, s.from);
            assert_eq!(
                s.seq, next[s.from],
                "stream of rank {} out of order",
                s.from
            );
            next[s.from] += 1;
        }
        assert!(next[1..].iter().all(|&n| n == count), "{next:?}");
        assert!(
            w.iprobe(ANY_SOURCE, ANY_TAG)?.is_none(),
            "a message was duplicated"
        );
        println!("fanin ok {}", count * (w.size() as u64 - 1));
    } else {
        for seq in 0..count {
            w.send(
                0,
                w.rank() as i32,
                &Stamp {
                    from: w.rank(),
                    seq,
                },
            )?;
        }
    }
    w.barrier()?;
    Ok(())
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(salt ^ (i >> 16) as u8)
        })
        .collect()
}

/// Messages of 0 B .. 64 MiB every way we can send them; 1 checks and echoes back.
fn sizes(w: &Comm) -> R {
    let sizes = [
        0usize,
        1,
        7,
        40,
        4095,
        4096,
        65535,
        65536,
        65537,
        1 << 20,
        (8 << 20) + 3,
        64 << 20,
    ];
    if w.rank() == 0 {
        for (i, &len) in sizes.iter().enumerate() {
            let data = pattern(len, i as u8);
            w.send_slice(1, 1, &data)?;
            w.send(1, 2, &data)?;
            w.isend_slice(1, 3, &data)?.wait()?;
            let (back, _) = w.recv_vec::<u8>(1, 4)?;
            assert!(back == data, "echo of {len} bytes differs");
        }
        // f64 slices keep their values.
        let xs: Vec<f64> = (0..300_000).map(|i| i as f64 * 0.5).collect();
        w.send_slice(1, 5, &xs)?;
        println!("sizes ok");
    } else if w.rank() == 1 {
        for (i, &len) in sizes.iter().enumerate() {
            let want = pattern(len, i as u8);
            let (a, st) = w.recv_vec::<u8>(0, 1)?;
            assert_eq!(st.len, len);
            assert!(a == want, "raw {len}");
            let (b, _) = w.recv::<Vec<u8>>(0, 2)?;
            assert!(b == want, "serde {len}");
            let mut c = vec![0u8; len + 5];
            let st = w.recv_into(0, 3, &mut c)?;
            assert_eq!(st.len, len);
            assert!(c[..len] == want[..], "recv_into {len}");
            w.send_slice(0, 4, &a)?;
        }
        let (xs, st) = w.recv_vec::<f64>(0, 5)?;
        assert_eq!(st.count::<f64>(), 300_000);
        assert!(xs.iter().enumerate().all(|(i, &x)| x == i as f64 * 0.5));
    }
    Ok(())
}

/// Tags and wildcards: a specific tag overtakes queued ones; wildcards take arrival order.
fn wildcard(w: &Comm) -> R {
    match w.rank() {
        1 => {
            for tag in [5, 3, 9] {
                w.send(0, tag, &format!("tag {tag}"))?;
            }
            w.barrier()?;
        }
        0 => {
            let st = w.probe(1, 9)?;
            assert_eq!((st.source, st.tag), (1, 9));
            let (s, _) = w.recv::<String>(1, 9)?;
            assert_eq!(s, "tag 9");
            let (s, st) = w.recv::<String>(ANY_SOURCE, ANY_TAG)?;
            assert_eq!((s.as_str(), st.tag), ("tag 5", 5));
            let st = w.iprobe(ANY_SOURCE, ANY_TAG)?.expect("tag 3 is queued");
            assert_eq!(st.tag, 3);
            let (s, _) = w.recv::<String>(1, ANY_TAG)?;
            assert_eq!(s, "tag 3");
            assert!(w.iprobe(1, ANY_TAG)?.is_none());
            w.barrier()?;
            println!("wildcard ok");
        }
        _ => w.barrier()?,
    }
    Ok(())
}

/// Receiving the wrong type is an error naming source, tag and type; nothing is lost after.
fn mismatch(w: &Comm) -> R {
    match w.rank() {
        0 => {
            w.send(1, 4, &"hello world".to_string())?;
            w.send_slice(1, 6, &[1.5f64, 2.5])?;
            w.send(1, 7, &42u32)?;
            w.send(1, 8, &-1i32)?;
            w.send(1, 9, &"a str")?;
            w.send(1, 10, &[3u16, 4][..])?;
        }
        1 => {
            let e = w.recv::<u64>(0, 4).expect_err("a String is not a u64");
            println!("error: {e}");
            assert!(
                matches!(
                    e,
                    Error::TypeMismatch {
                        rank: 0,
                        tag: 4,
                        ..
                    }
                ),
                "{e:?}"
            );
            let e = w
                .recv::<String>(0, 6)
                .expect_err("raw f64 slice is not a String");
            println!("error: {e}");
            let (v, _) = w.recv::<u32>(0, 7)?;
            assert_eq!(v, 42);
            // A -1i32 is not a u32 (it would decode as 1): refused, and not lost.
            let e = w.recv::<u32>(0, 8).expect_err("an i32 is not a u32");
            println!("error: {e}");
            let (v, _) = w.recv::<i32>(0, 8)?;
            assert_eq!(v, -1);
            // Types serde encodes alike match: a &str as a String, a slice as a Vec.
            assert_eq!(w.recv::<String>(0, 9)?.0, "a str");
            assert_eq!(w.recv::<Vec<u16>>(0, 10)?.0, vec![3, 4]);
            println!("mismatch ok");
        }
        _ => {}
    }
    Ok(())
}

/// Bad arguments are errors, not panics.
fn badargs(w: &Comm) -> R {
    let e = w
        .send(w.size() + 3, 0, &1u8)
        .expect_err("rank out of range");
    println!("error: {e}");
    assert!(matches!(e, Error::InvalidRank { .. }));
    let e = w.send(0, -5, &1u8).expect_err("negative tag");
    assert!(matches!(e, Error::InvalidTag(-5)));
    let e = w.recv::<u8>(-7, 0).expect_err("negative source");
    assert!(matches!(e, Error::InvalidRank { .. }));
    if w.rank() == 0 && w.size() > 1 {
        w.send_slice(1, 0, &[1u32, 2, 3, 4])?;
    }
    if w.rank() == 1 {
        let mut small = [0u32; 2];
        let e = w.recv_into(0, 0, &mut small).expect_err("buffer too small");
        assert!(
            matches!(
                e,
                Error::Truncated {
                    rank: 0,
                    tag: 0,
                    len: 16,
                    capacity: 8
                }
            ),
            "{e:?}"
        );
        println!("error: {e}");
        // The message is still there for a big enough buffer.
        let mut big = [0u32; 4];
        w.recv_into(0, 0, &mut big)?;
        assert_eq!(big, [1, 2, 3, 4]);
    }
    // sendrecv_replace around the ring; then a message too long for the buffer stays queued.
    let (me, n) = (w.rank(), w.size());
    let mut block = [me as u64, 7, 7];
    let st = w.sendrecv_replace(&mut block, (me + 1) % n, 9, (me + n - 1) % n, 9)?;
    assert_eq!(block, [((me + n - 1) % n) as u64, 7, 7]);
    assert_eq!(st.len, 24);
    if n > 1 {
        let mut short = [0u8; 2];
        if me == 0 {
            w.send_slice(1, 10, &[1u8, 2, 3])?;
        }
        if me == 1 {
            let e = w
                .sendrecv_replace(&mut short, 1, 11, 0, 10)
                .expect_err("too long");
            assert!(
                matches!(
                    e,
                    Error::Truncated {
                        len: 3,
                        capacity: 2,
                        ..
                    }
                ),
                "{e:?}"
            );
            let mut whole = [0u8; 3];
            w.recv_into(0, 10, &mut whole)?;
            assert_eq!(whole, [1, 2, 3]);
            w.recv_into(1, 11, &mut short)?; // what it sent itself
        }
    }
    println!("badargs ok");
    Ok(())
}

/// A message above RANKS_MAX_MESSAGE is refused with an error; the next one still arrives.
fn toolarge(w: &Comm) -> R {
    match w.rank() {
        0 => {
            w.send_slice(1, 1, &vec![7u8; 5000])?;
            w.send_slice(1, 2, &[1u8, 2, 3])?;
        }
        1 => {
            let e = w.recv_vec::<u8>(0, 1).expect_err("above the limit");
            println!("error: {e}");
            assert!(
                matches!(
                    e,
                    Error::FrameTooLarge {
                        rank: 0,
                        tag: 1,
                        len: 5000,
                        ..
                    }
                ),
                "{e:?}"
            );
            let (v, _) = w.recv_vec::<u8>(0, 2)?;
            assert_eq!(v, [1, 2, 3]);
            println!("toolarge ok");
        }
        _ => {}
    }
    Ok(())
}

/// Rank FAILER (arg 3, default 1) fails the way arg 2 says, after everyone started.
fn fail(w: &Comm) -> R {
    let how = std::env::args().nth(2).unwrap_or_default();
    let failer = arg(3, 1) as usize;
    w.barrier()?;
    if w.rank() == failer {
        match how.as_str() {
            "panic" => panic!("rank {failer} panics on purpose"),
            "exit3" => std::process::exit(3),
            "sigkill" => {
                let me = rustix::process::getpid();
                rustix::process::kill_process(me, rustix::process::Signal::KILL).ok();
                unreachable!("SIGKILL does not return");
            }
            other => panic!("unknown failure {other}"),
        }
    }
    // Everyone else waits for a message that will never come.
    let r = w.recv::<u8>(failer, 0);
    println!("rank {} woke up: {r:?}", w.rank());
    std::thread::sleep(std::time::Duration::from_secs(60));
    Ok(())
}

/// Every rank but ARG (default 1) prints lines as fast as it can; that rank exits 3 after
/// 50 ms, so the launcher reports it while output floods in.
fn chatter(w: &Comm) -> R {
    let failer = arg(2, 1) as usize;
    if w.rank() == failer {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::process::exit(3);
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        if writeln!(
            out,
            "chatter from rank {} line {i} {}",
            w.rank(),
            "x".repeat(60)
        )
        .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// Rank ARG (default 3) calls abort(7) after a barrier; the others wait on it and exit 1 on
/// PeerLost (or keep waiting).
fn abort(w: &Comm) -> R {
    let who = arg(2, 3) as usize % w.size();
    w.barrier()?;
    if w.rank() == who {
        w.abort(7);
    }
    // `abort WHO idle`: the others are busy elsewhere (not waiting on anyone) for a minute;
    // only the launcher (or Slurm) ending the job stops them.
    if std::env::args().nth(3).is_some_and(|a| a == "idle") {
        std::thread::sleep(std::time::Duration::from_secs(60));
        return Ok(());
    }
    match w.recv::<u8>(who, 0) {
        Ok(_) => panic!("nothing was sent"),
        Err(e) => {
            eprintln!("SURVIVOR {}: {e}", w.rank());
            std::process::exit(1)
        }
    }
}

/// Rank 1 leaves early; rank 0's receive from it fails with PeerLost instead of hanging.
fn peerlost(w: &Comm) -> R {
    if w.rank() == 1 {
        return Ok(());
    }
    if w.rank() == 0 {
        let e = w.recv::<u8>(1, 0).expect_err("rank 1 is gone");
        println!("error: {e}");
        assert!(matches!(e, Error::PeerLost { rank: 1, .. }), "{e:?}");
        let e = w.recv::<u8>(ANY_SOURCE, 0);
        if w.size() == 2 {
            assert!(matches!(e, Err(Error::PeerLost { .. })), "{e:?}");
        }
        println!("peerlost ok");
    }
    Ok(())
}

/// The last rank ends (`HOW`: exit0, exit3, panic or kill) 300 ms after a barrier while
/// the others are blocked in `OP` (allreduce, barrier, bcast, anysource, ring); each survivor
/// prints the error it got, naming the rank, and how long after the end it came.
/// With `propagate`, survivors then fail with that error (exit 1), as most programs would.
/// `ranks-testjob dies OP HOW [propagate]`
/// Request sets: every rank posts a receive from each other rank (tag 100 + sender) and the
/// others send at staggered times (rank r after r x 30 ms). `test_all` finds nothing before
/// anyone sends; `wait_any` then returns each receive once, with its own result; sends to
/// everyone are collected with `wait_some`/`test_some`. With `dead`, the last rank exits
/// (cleanly) without sending: its receive alone fails, naming it.
fn request_sets(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    let dead = std::env::args().nth(2).is_some_and(|a| a == "dead");
    let victim = n - 1;
    let others: Vec<usize> = (0..n).filter(|&r| r != me).collect();
    let mut recvs = others
        .iter()
        .map(|&r| w.irecv::<u64>(r, 100 + r as i32))
        .collect::<Result<Vec<_>, _>>()?;
    assert!(n == 1 || ranks::test_all(&mut recvs).is_none());
    assert_eq!(recvs.len(), others.len());
    w.barrier()?;
    if dead && me == victim {
        std::process::exit(0);
    }
    std::thread::sleep(std::time::Duration::from_millis(30 * me as u64));
    let payload: Vec<u64> = vec![me as u64 * 1000; 1];
    // Not to the rank that left (a send to it fails at once over sockets).
    let live: Vec<usize> = others
        .iter()
        .copied()
        .filter(|&r| !(dead && r == victim))
        .collect();
    let mut sends = live
        .iter()
        .map(|&r| w.isend(r, 100 + me as i32, &payload[0]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = Vec::new();
    let mut lost = Vec::new();
    while let Some((i, r)) = ranks::wait_any(&mut recvs) {
        assert!(i < recvs.len() + 1);
        match r {
            Ok((v, st)) => {
                assert_eq!(v, st.source as u64 * 1000);
                assert_eq!(st.tag, 100 + st.source as i32);
                seen.push(st.source);
            }
            Err(ranks::Error::PeerLost { rank, .. }) => lost.push(rank),
            Err(e) => return Err(e),
        }
    }
    let mut sends_done = 0;
    while !sends.is_empty() {
        let got = ranks::test_some(&mut sends);
        let got = if got.is_empty() {
            ranks::wait_some(&mut sends)
        } else {
            got
        };
        for (_, r) in got {
            r?;
            sends_done += 1;
        }
    }
    assert_eq!(sends_done, live.len());
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seen.len(),
        "a receive completed twice: {seen:?}"
    );
    let want: Vec<usize> = if dead && me != victim {
        assert_eq!(lost, [victim]);
        others.iter().copied().filter(|&r| r != victim).collect()
    } else {
        assert!(lost.is_empty(), "{lost:?}");
        others.clone()
    };
    assert_eq!(sorted, want);
    if !dead {
        mixed_set(w)?;
    }
    println!(
        "request sets ok on rank {me}: {} received, lost {lost:?}",
        seen.len()
    );
    Ok(())
}

/// One set of requests of every kind (receives of two types, sends, a nonblocking
/// all-reduce and barrier), mapped into one type and finished by `wait_some`/`test_any`:
/// each finishes once, with its own result.
fn mixed_set(w: &Comm) -> R {
    #[derive(Debug)]
    enum Done {
        Words(String, usize),
        Numbers(Vec<u64>, usize),
        Sent,
        Sum(Vec<u64>),
        Barrier,
    }
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let big: Vec<u64> = (0..50_000).map(|i| i * me as u64).collect();
    let mut set = vec![
        w.irecv::<String>(prev, 200)?
            .map(|(s, st)| Done::Words(s, st.source)),
        w.irecv_vec::<u64>(prev, 201)?
            .map(|(v, st)| Done::Numbers(v, st.source)),
        w.iall_reduce(vec![me as u64, 1], ranks::op::Sum)
            .map(Done::Sum),
        w.ibarrier().map(|()| Done::Barrier),
    ];
    set.push(
        w.isend(next, 200, &format!("from {me}"))?
            .map(|()| Done::Sent),
    );
    set.push(w.isend_slice(next, 201, &big)?.map(|()| Done::Sent));
    let mut kinds = Vec::new();
    while !set.is_empty() {
        let got = match ranks::test_any(&mut set) {
            Some(one) => vec![one],
            None => ranks::wait_some(&mut set),
        };
        for (_, r) in got {
            match r? {
                Done::Words(s, from) => {
                    assert_eq!((s, from), (format!("from {prev}"), prev));
                    kinds.push("words");
                }
                Done::Numbers(v, from) => {
                    assert_eq!(from, prev);
                    assert!(v
                        .iter()
                        .enumerate()
                        .all(|(i, &x)| x == i as u64 * prev as u64));
                    kinds.push("numbers");
                }
                Done::Sent => kinds.push("sent"),
                Done::Sum(t) => {
                    assert_eq!(t, vec![(n * (n - 1) / 2) as u64, n as u64]);
                    kinds.push("sum");
                }
                Done::Barrier => kinds.push("barrier"),
            }
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["barrier", "numbers", "sent", "sent", "sum", "words"]
    );
    Ok(())
}

/// Matched probe: rank 0's two threads each `mprobe` any message with tag 5 and receive it
/// into a buffer sized from their probe, while the other ranks send 40 messages each of
/// sizes from 8 B to 2 MiB (the large ones by rendezvous). Every receive gets exactly the
/// message its probe described (a probe and a receive in two steps would race here). Then:
/// `improbe` finds nothing before anything is sent; a dropped `Message` goes back in its
/// place; a wrong-type receive through a `Message` puts it back too.
fn mprobe(w: &Comm) -> R {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const PER: usize = 40;
    let (me, n) = (w.rank(), w.size());
    if me == 0 {
        assert!(w.improbe(ANY_SOURCE, 6)?.is_none());
    }
    w.barrier()?;
    if me == 0 {
        let left = AtomicUsize::new((n - 1) * PER);
        let got = AtomicUsize::new(0);
        std::thread::scope(|s| -> R {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| -> R {
                        while left
                            .fetch_update(SeqCst, SeqCst, |x| x.checked_sub(1))
                            .is_ok()
                        {
                            let m = w.mprobe(ANY_SOURCE, 5)?;
                            let k = m.status().count::<u64>();
                            let src = m.status().source;
                            let mut buf = vec![0u64; k];
                            let st = m.recv_into(&mut buf)?;
                            assert_eq!((st.source, st.len), (src, k * 8));
                            assert!(buf.iter().all(|&x| x == src as u64));
                            got.fetch_add(1, SeqCst);
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in workers {
                h.join().expect("a receiving thread panicked")?;
            }
            Ok(())
        })?;
        assert_eq!(got.load(SeqCst), (n - 1) * PER);
    } else {
        for i in 0..PER {
            let len = [1usize, 100, 5000, 1 << 18][i % 4] * (me % 3 + 1) / 3 + 1;
            w.send_slice(0, 5, &vec![me as u64; len])?;
        }
    }
    w.barrier()?;
    if me == 0 {
        w.send(0, 7, &42u32)?;
        drop(w.mprobe(0, 7)?);
        let e = w
            .mprobe(0, 7)?
            .recv::<String>()
            .expect_err("a u32 is not a String");
        assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
        let m = w.improbe(0, 7)?.expect("still there");
        assert_eq!(m.recv::<u32>()?.0, 42);
        // A raw slice received as a serde value, and as the wrong element type: refused,
        // and still there for the right receive.
        w.send_slice(0, 8, &[1.5f64, 2.5])?;
        let e = w
            .mprobe(0, 8)?
            .recv::<Vec<f64>>()
            .expect_err("raw, not serde");
        assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
        let e = w.mprobe(0, 8)?.recv_vec::<u32>().expect_err("f64, not u32");
        assert!(matches!(e, Error::TypeMismatch { .. }), "{e:?}");
        assert_eq!(w.recv_vec::<f64>(0, 8)?.0, [1.5, 2.5]);
        println!("mprobe ok on {n} ranks");
    }
    w.barrier()
}

/// Persistent requests: a ring exchange set up once with `send_init`/`recv_init` and
/// started 20 times, the buffer changed between starts (each start sends it as it is then).
fn persistent(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let recv = w.recv_init::<u64>(prev, 3)?;
    for round in 0..20u64 {
        // A new buffer each round: a persistent send borrows its buffer.
        let data = vec![me as u64 * 100 + round; 1 + (round as usize % 3) * 20_000];
        let send = w.send_init(next, 3, &data)?;
        let r = recv.start()?;
        let s = send.start()?;
        let (got, st) = r.wait()?;
        s.wait()?;
        assert_eq!(st.source, prev);
        assert_eq!(got.len(), data.len());
        assert!(got.iter().all(|&x| x == prev as u64 * 100 + round));
    }
    let bad = w.send_init(n, 0, &[0u8]);
    assert!(matches!(bad, Err(Error::InvalidRank { .. })));
    println!("persistent ok on rank {me}");
    Ok(())
}

/// Sleeps 400 ms when dropped during a panic (if armed).
struct SlowUnwind(bool);

impl Drop for SlowUnwind {
    fn drop(&mut self) {
        if self.0 && std::thread::panicking() {
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
    }
}

fn dies(w: &Comm) -> R {
    let op = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "allreduce".into());
    let how = std::env::args().nth(3).unwrap_or_else(|| "kill".into());
    let propagate = std::env::args().nth(4).is_some_and(|a| a == "propagate");
    let (me, n) = (w.rank(), w.size());
    let victim = n - 1;
    // `slowpanic`: a panic whose unwinding takes 400 ms more after the pipes are dropped
    // (this guard is dropped after them), so the news a dropped end sends comes well before
    // the process's exit.
    let _slow = SlowUnwind(how == "slowpanic");
    // Primitives (created by every rank): the victim owns the object, holds the lock, or
    // is the party that never arrives.
    let queue = (op == "queue")
        .then(|| ranks::Queue::<u64>::new(w, victim, 0))
        .transpose()?;
    let sem = (op == "semaphore")
        .then(|| ranks::Semaphore::new(w, victim, 0))
        .transpose()?;
    let event = (op == "event")
        .then(|| ranks::Event::new(w, victim))
        .transpose()?;
    let cond = (op == "condition")
        .then(|| ranks::Condition::new(w, victim))
        .transpose()?;
    let dict = (op == "dict")
        .then(|| ranks::Manager::new(w, victim).and_then(|m| m.dict::<u64, u64>()))
        .transpose()?;
    let lock = (op == "lock").then(|| ranks::Lock::new(w, 0)).transpose()?;
    let pbarrier = (op == "pbarrier")
        .then(|| ranks::Barrier::new(w, 0, n))
        .transpose()?;
    // A pipe between every survivor and the victim (every rank takes part in making each).
    let mut pipes = Vec::new();
    if op == "pipe" {
        for r in 0..victim {
            if let Some(p) = ranks::Pipe::<u64>::new(w, r, victim, true)? {
                pipes.push(p);
            }
        }
    }
    if let (Some(l), true) = (&lock, me == victim) {
        // Held until death, whatever the death (a panic would release it on unwinding).
        std::mem::forget(l.acquire()?);
    }
    w.barrier()?;
    let t0 = std::time::Instant::now();
    let end = std::time::Duration::from_millis(300);
    if me == victim {
        std::thread::sleep(end);
        match how.as_str() {
            "exit0" => std::process::exit(0),
            "exit3" => std::process::exit(3),
            "panic" | "slowpanic" => panic!("the victim panics"),
            _ => {
                let _ = rustix::process::kill_process(
                    rustix::process::getpid(),
                    rustix::process::Signal::KILL,
                );
                std::thread::sleep(std::time::Duration::from_secs(10));
                return Ok(());
            }
        }
    }
    let r: R = match op.as_str() {
        "allreduce" => w.all_reduce_slice(&[1u64], &mut [0u64], &ranks::op::Sum),
        "barrier" => w.barrier(),
        // The nonblocking forms: state machines that notice the loss themselves.
        "iallreduce" => w.iall_reduce(vec![1u64], ranks::op::Sum).wait().map(drop),
        "ibarrier" => w.ibarrier().wait(),
        "bcast" => {
            let mut v = [0u64; 4];
            w.broadcast_slice(victim, &mut v)
        }
        // Everyone waits for a message from anyone (none comes).
        "anysource" => w.recv::<u64>(ANY_SOURCE, 0).map(drop),
        // Each waits on its left neighbour: only rank 0 waits on the victim directly.
        "ring" => w.recv::<u64>((me + n - 1) % n, 0).map(drop),
        "queue" => queue.as_ref().expect("made").get().map(drop),
        "semaphore" => sem.as_ref().expect("made").acquire(),
        "event" => event.as_ref().expect("made").wait(),
        "condition" => {
            let c = cond.as_ref().expect("made");
            c.acquire().and_then(|g| c.wait(&g))
        }
        // Calls that do not block: every call from now on fails once the owner is gone.
        "dict" => loop {
            if let Err(e) = dict
                .as_ref()
                .expect("made")
                .update(&0, |v| v.unwrap_or(0) + 1)
            {
                break Err(e);
            }
            if t0.elapsed() > std::time::Duration::from_secs(5) {
                break Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        },
        "lock" => lock.as_ref().expect("made").acquire().map(drop),
        "pbarrier" => pbarrier.as_ref().expect("made").wait().map(drop),
        "pipe" => pipes[0].recv().map(drop),
        other => panic!("unknown op {other}"),
    };
    let ms = t0.elapsed().saturating_sub(end).as_millis();
    match &r {
        Err(Error::PeerLost { rank, detail }) => {
            println!("survivor {me} {op}: PeerLost rank {rank} ({detail}) after {ms} ms")
        }
        Err(Error::HolderDied { rank, .. }) => {
            println!("survivor {me} {op}: HolderDied rank {rank} after {ms} ms")
        }
        Err(Error::BrokenBarrier(why)) => {
            println!("survivor {me} {op}: BrokenBarrier ({why}) after {ms} ms")
        }
        Err(Error::EndOfStream) => println!("survivor {me} {op}: EndOfStream after {ms} ms"),
        Err(e) => println!("survivor {me} {op}: other error {e} after {ms} ms"),
        Ok(()) => println!("survivor {me} {op}: completed after {ms} ms"),
    }
    if propagate {
        return r;
    }
    Ok(())
}

/// A job that gets stuck (`KIND`): `recv` (ranks 0 and 1 each receive from the other; the
/// rest wait in a barrier), `mismatch` (even ranks call barrier, odd ones all-reduce), `lock`
/// (rank 0 holds a lock and waits for rank 1, which waits for the lock).
fn stuck(w: &Comm) -> R {
    let kind = std::env::args().nth(2).unwrap_or_else(|| "recv".into());
    let me = w.rank();
    println!("stuck rank {me} ready");
    match kind.as_str() {
        "recv" => match me {
            0 => drop(w.recv::<u64>(1, 5)?),
            1 => drop(w.recv::<u64>(0, 7)?),
            _ => w.barrier()?,
        },
        "mismatch" if me.is_multiple_of(2) => w.barrier()?,
        "mismatch" => w.all_reduce_slice(&[1u64], &mut [0u64], &ranks::op::Sum)?,
        // Nonblocking collectives started in a different order, then waited on.
        "imismatch" if me.is_multiple_of(2) => w.ibarrier().wait()?,
        "imismatch" => drop(w.iall_reduce(vec![1u64], ranks::op::Sum).wait()?),
        "lock" => {
            let lock = ranks::Lock::new(w, 0)?;
            if me == 0 {
                let _g = lock.acquire()?;
                w.barrier()?;
                w.recv::<u64>(1, 3)?;
            } else {
                w.barrier()?;
                let _g = lock.acquire()?;
                w.send(0, 3, &1u64)?;
            }
        }
        other => panic!("unknown kind {other}"),
    }
    Ok(())
}

/// Work for the chaos test: for about MS milliseconds (rank 0 decides when to stop), each
/// round does an all-reduce, a ring exchange, and now and then takes a lock; then a barrier.
/// `ranks-testjob chaos MS`
fn chaos(w: &Comm) -> R {
    let dur = std::time::Duration::from_millis(arg(2, 1500));
    let big = arg(3, 0) as usize;
    let (me, n) = (w.rank(), w.size());
    let lock = ranks::Lock::new(w, 0)?;
    let t0 = std::time::Instant::now();
    let mut rounds = 0u64;
    loop {
        let more = u64::from(me == 0 && t0.elapsed() < dur);
        let mut go = [0u64];
        w.all_reduce_slice(&[more], &mut go, &ranks::op::Max)?;
        if go[0] == 0 {
            break;
        }
        let (got, _) = w.sendrecv::<u64, u64>(&rounds, (me + 1) % n, 1, (me + n - 1) % n, 1)?;
        assert_eq!(got, rounds, "ring out of step");
        // `chaos MS BIG`: every fourth round also a ring of BIG-element messages (large
        // enough to be pulled, and the pulls shared with the senders over shm).
        if big > 0 && rounds.is_multiple_of(4) {
            let out = vec![rounds * 16 + me as u64; big];
            let s = w.isend_slice((me + 1) % n, 2, &out)?;
            let (got, _) = w.recv_vec::<u64>((me + n - 1) % n, 2)?;
            s.wait()?;
            let want = rounds * 16 + ((me + n - 1) % n) as u64;
            assert!(
                got.len() == big && got.iter().all(|&v| v == want),
                "big ring out of step"
            );
        }
        if rounds % 16 == me as u64 {
            let _g = lock.acquire()?;
        }
        rounds += 1;
    }
    w.barrier()?;
    println!("chaos ok rank {me} after {rounds} rounds");
    Ok(())
}

/// Synchronous sends complete only once matched. Every other rank receives rank 0's
/// `issend`s only after rank 0's "go": until then each request stays incomplete, whatever
/// its size (a plain send of the small ones would be done at once). Then blocking `ssend`s
/// the other way, and serde ones.
/// Groups and communicator management against sequential references: set operations,
/// translation, `create` (in the group's order), `compare`, and communicators made and
/// dropped many times (their ids reused) without messages crossing.
fn groups(w: &Comm) -> R {
    use ranks::Comparison;
    let (me, n) = (w.rank(), w.size());
    let all = w.group();
    assert_eq!((all.size(), all.rank()), (n, Some(me)));
    let evens: Vec<usize> = (0..n).step_by(2).collect();
    let odds: Vec<usize> = (1..n).step_by(2).collect();
    let ge = all.incl(&evens)?;
    let go = all.excl(&evens)?;
    assert_eq!(go.world_ranks(), &odds[..]);
    assert_eq!(all.difference(&ge).world_ranks(), &odds[..]);
    assert_eq!(
        go.union(&ge).world_ranks(),
        &[&odds[..], &evens[..]].concat()[..]
    );
    assert_eq!(ge.intersection(&go).size(), 0);
    assert_eq!(ge.rank(), (me % 2 == 0).then_some(me / 2));
    let t = ge.translate_ranks(&(0..ge.size()).collect::<Vec<_>>(), &all)?;
    assert_eq!(t, evens.iter().map(|&e| Some(e)).collect::<Vec<_>>());
    assert_eq!(
        ge.union(&go).compare(&all),
        if n > 2 {
            Comparison::Similar
        } else {
            Comparison::Identical
        }
    );

    // create: the evens, ranked in order; then the whole world reversed.
    match w.create(&ge)? {
        Some(c) => {
            assert_eq!((c.rank(), c.size()), (me / 2, evens.len()));
            let mut sum = [0u64];
            c.all_reduce_slice(&[me as u64], &mut sum, &ranks::op::Sum)?;
            assert_eq!(sum[0], evens.iter().sum::<usize>() as u64);
            assert_eq!(
                c.compare(w),
                if n == 1 {
                    Comparison::Congruent
                } else {
                    Comparison::Unequal
                }
            );
        }
        None => assert!(me % 2 == 1, "even rank {me} left out"),
    }
    let rev = all.incl(&(0..n).rev().collect::<Vec<_>>())?;
    let r = w.create(&rev)?.expect("everyone is in it");
    assert_eq!(r.rank(), n - 1 - me);
    assert_eq!(r.members(), rev.world_ranks());
    assert_eq!(
        r.compare(w),
        if n == 1 {
            Comparison::Congruent
        } else {
            Comparison::Similar
        }
    );
    assert_eq!(w.compare(&w.clone()), Comparison::Identical);
    assert_eq!(w.compare(&w.dup()?), Comparison::Congruent);
    // A group with someone outside the communicator is refused, on every rank.
    if let Some(half) = w.create(&ge)? {
        assert!(half.create(&all).is_err() == (n > 1));
    }

    // Names and attributes belong to the communicator (all its handles), not to copies.
    let named = w.dup()?;
    named.set_name("pairs");
    named.set_attr(me * 3);
    assert_eq!(
        (w.name().as_str(), named.clone().name().as_str()),
        ("world", "pairs")
    );
    assert_eq!(named.clone().attr::<usize>().as_deref(), Some(&(me * 3)));
    assert!(w.attr::<usize>().is_none() && named.dup()?.name().is_empty());

    // Made and dropped 300 times: each passes a token round a ring, and each one's
    // traffic stays its own, though ids are reused (two alive at a time, staggered).
    let mut prev: Option<Comm> = None;
    for i in 0..300u64 {
        let d = w.dup()?;
        if let Some(p) = &prev {
            // Traffic in flight on the older one while the newer one works.
            p.send((me + 1) % n, 9, &(i, 1u8))?;
        }
        let (got, _): ((u64, usize), _) =
            d.sendrecv(&(i, me), (me + 1) % n, 0, (me + n - 1) % n, 0)?;
        assert_eq!(got, (i, (me + n - 1) % n));
        if let Some(p) = prev.take() {
            let (g, _): ((u64, u8), _) = p.recv((me + n - 1) % n, 9)?;
            assert_eq!(g, (i, 1));
        }
        prev = Some(d);
    }
    println!("groups ok rank {me}");
    Ok(())
}

/// Cartesian grids against sequential references: coordinates, shifts, sub-grids and the
/// neighbour collectives, in 1, 2 and 3 dimensions, periodic or not (short periodic
/// dimensions make a rank its own neighbour, or both neighbours one rank).
fn cart(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    for (ndims, periodic) in [
        (2, [true, false, true]),
        (3, [true, true, true]),
        (1, [false; 3]),
    ] {
        let mut dims = vec![0; ndims];
        ranks::dims_create(n, &mut dims)?;
        let periods = &periodic[..ndims];
        let g = w
            .cart_create(&dims, periods)?
            .expect("the grid holds every rank");
        assert_eq!(g.rank(), me);
        // Row-major coordinates, as a reference.
        let coords = |r: usize| -> Vec<usize> {
            let mut c = vec![0; ndims];
            let mut r = r;
            for d in (0..ndims).rev() {
                c[d] = r % dims[d];
                r /= dims[d];
            }
            c
        };
        let rank_of = |c: &[isize]| -> Option<usize> {
            let mut r = 0;
            for d in 0..ndims {
                let x = if periods[d] {
                    c[d].rem_euclid(dims[d] as isize)
                } else {
                    c[d]
                };
                if x < 0 || x >= dims[d] as isize {
                    return None;
                }
                r = r * dims[d] + x as usize;
            }
            Some(r)
        };
        for r in 0..n {
            assert_eq!(g.coords_of(r)?, coords(r));
        }
        let mine: Vec<isize> = coords(me).iter().map(|&c| c as isize).collect();
        let mut nb = Vec::new();
        for d in 0..ndims {
            for disp in [1isize, 2, -1] {
                let at = |k: isize| {
                    let mut c = mine.clone();
                    c[d] += k;
                    rank_of(&c)
                };
                let s = g.shift(d, disp)?;
                assert_eq!(
                    (s.source, s.dest),
                    (at(-disp), at(disp)),
                    "shift {d} by {disp}"
                );
            }
            let s = g.shift(d, 1)?;
            nb.extend([s.source, s.dest]);
        }
        assert_eq!(g.neighbors(), nb);

        // All-gather from the neighbours; blocks without one stay as they were.
        let mut got = vec![u64::MAX; 2 * nb.len()];
        g.neighbor_all_gather_slice(&[me as u64, 1000 + me as u64], &mut got)?;
        for (i, p) in nb.iter().enumerate() {
            let want = p.map_or([u64::MAX; 2], |p| [p as u64, 1000 + p as u64]);
            assert_eq!(got[2 * i..2 * i + 2], want, "block {i} from {p:?}");
        }
        // All-to-all: block i to neighbour i; what comes from neighbour i is the block it
        // sent this way (back along d for the one ahead, forward for the one behind).
        let send: Vec<u64> = (0..nb.len()).map(|i| (me * 100 + i) as u64).collect();
        let mut back = vec![u64::MAX; nb.len()];
        g.neighbor_all_to_all_slice(&send, &mut back)?;
        for (i, p) in nb.iter().enumerate() {
            assert_eq!(
                back[i],
                p.map_or(u64::MAX, |p| (p * 100 + (i ^ 1)) as u64),
                "block {i}"
            );
        }

        // Sub-grids: keep the last dimension (the rows of a 2-D grid).
        let mut keep = vec![false; ndims];
        keep[ndims - 1] = true;
        let row = g.sub(&keep)?;
        assert_eq!(
            (row.size(), row.rank()),
            (dims[ndims - 1], coords(me)[ndims - 1])
        );
        assert_eq!(row.dims(), &dims[ndims - 1..]);
        let mut sum = [0u64];
        row.all_reduce_slice(&[me as u64], &mut sum, &ranks::op::Sum)?;
        let want: usize = (0..n)
            .filter(|&r| coords(r)[..ndims - 1] == coords(me)[..ndims - 1])
            .sum();
        assert_eq!(sum[0], want as u64);
    }
    // A grid smaller than the communicator leaves the last ranks out.
    let fewer = w.cart_create(&[n.saturating_sub(1).max(1)], &[false])?;
    assert_eq!(fewer.is_some(), me < n.saturating_sub(1).max(1));
    assert!(w.cart_create(&[n + 1], &[false]).is_err());
    println!("cart ok rank {me}");
    Ok(())
}

/// Every collective's nonblocking form against its blocking one: all started before any is
/// waited on (then waited in reverse order), at sizes from empty to rendezvous, with a
/// commutative and an order-keeping operation; thousands in flight at once; and MPI's
/// progress rule (a rank blocked in a receive still plays its part in a pending collective).
fn nbc(w: &Comm) -> R {
    use ranks::op::Sum;
    let (me, n) = (w.rank(), w.size());
    // Affine maps x -> a x + b composed in rank order (associative, not commutative).
    let compose = |f: u64, g: u64| {
        let (a1, b1, a2, b2) = (f >> 32, f & 0xffff_ffff, g >> 32, g & 0xffff_ffff);
        ((a1.wrapping_mul(a2) & 0xffff_ffff) << 32)
            | (a1.wrapping_mul(b2).wrapping_add(b1) & 0xffff_ffff)
    };
    for len in [0usize, 1, 5, 40_000] {
        let x: Vec<u64> = (0..len as u64)
            .map(|i| ((i % 5 + me as u64 + 1) << 32) | (i * 7 + me as u64))
            .collect();
        let root = n / 2;
        let k = len % 7; // block size of the scatter-like ones
        let counts: Vec<usize> = (0..n).map(|r| len / n + usize::from(r < len % n)).collect();
        let a2a: Vec<u64> = (0..(n * k) as u64).map(|i| i + 1000 * me as u64).collect();
        let flat: Vec<u64> = (0..(n * k) as u64).map(|i| i * 3).collect();
        let ordered = || ranks::op::user_ordered(compose);
        // Start them all, in the same order everywhere.
        let r_bcast =
            w.ibroadcast_slice(root, if me == root { x.clone() } else { vec![0; len] })?;
        let r_reduce = w.ireduce(root, x.clone(), ordered())?;
        let r_all = w.iall_reduce(x.clone(), Sum);
        let r_all_o = w.iall_reduce(x.clone(), ordered());
        let r_scan = w.iscan(x.clone(), ordered());
        let r_exscan = w.iexscan(x.clone(), Sum);
        let r_rs = w.ireduce_scatter(x.clone(), &counts, ordered())?;
        let r_gather = w.igather(root, x.clone())?;
        let r_scatter = w.iscatter(root, if me == root { flat.clone() } else { Vec::new() }, k)?;
        let r_ag = w.iall_gather(x.clone());
        let r_a2a = w.iall_to_all(a2a.clone())?;
        let r_bar = w.ibarrier();
        // The blocking references, while those are in flight.
        let mut bcast = if me == root { x.clone() } else { vec![0; len] };
        w.broadcast_slice(root, &mut bcast)?;
        let mut reduce = vec![0u64; len];
        w.reduce_slice(root, &x, &mut reduce, &ordered())?;
        let mut all = vec![0u64; len];
        w.all_reduce_slice(&x, &mut all, &Sum)?;
        let mut all_o = vec![0u64; len];
        w.all_reduce_slice(&x, &mut all_o, &ordered())?;
        let mut scan = vec![0u64; len];
        w.scan_slice(&x, &mut scan, &ordered())?;
        let mut exscan = x.clone();
        w.exscan_slice(&x, &mut exscan, &Sum)?;
        let mut rs = vec![0u64; counts[me]];
        w.reduce_scatter_slice(&x, &mut rs, &counts, &ordered())?;
        let mut gather = vec![0u64; if me == root { len * n } else { 0 }];
        w.gather_slice(root, &x, &mut gather)?;
        let mut scatter = vec![0u64; k];
        w.scatter_slice(root, if me == root { &flat[..] } else { &[] }, &mut scatter)?;
        let mut ag = vec![0u64; len * n];
        w.all_gather_slice(&x, &mut ag)?;
        let mut back = vec![0u64; n * k];
        w.all_to_all_slice(&a2a, &mut back)?;
        // Waited in reverse order.
        r_bar.wait()?;
        assert_eq!(r_a2a.wait()?, back, "iall_to_all {len}");
        assert_eq!(r_ag.wait()?, ag, "iall_gather {len}");
        assert_eq!(r_scatter.wait()?, scatter, "iscatter {len}");
        assert_eq!(
            r_gather.wait()?,
            (me == root).then_some(gather),
            "igather {len}"
        );
        assert_eq!(r_rs.wait()?, rs, "ireduce_scatter {len}");
        assert_eq!(r_exscan.wait()?, exscan, "iexscan {len}");
        assert_eq!(r_scan.wait()?, scan, "iscan {len}");
        assert_eq!(r_all_o.wait()?, all_o, "iall_reduce ordered {len}");
        assert_eq!(r_all.wait()?, all, "iall_reduce {len}");
        assert_eq!(
            r_reduce.wait()?,
            (me == root).then_some(reduce),
            "ireduce {len}"
        );
        assert_eq!(r_bcast.wait()?, bcast, "ibroadcast {len}");

        // Blocks of different sizes (some empty), against the blocking varcount forms.
        let cv: Vec<usize> = (0..n).map(|r| (r * 3 + len) % 4).collect();
        let mine: Vec<u64> = (0..cv[me] as u64).map(|i| i + 100 * me as u64).collect();
        let whole: Vec<u64> = (0..cv.iter().sum::<usize>() as u64).collect();
        let sc: Vec<usize> = (0..n).map(|j| (me + j + len) % 3).collect();
        let rc: Vec<usize> = (0..n).map(|i| (i + me + len) % 3).collect();
        let a2av: Vec<u64> = (0..sc.iter().sum::<usize>() as u64)
            .map(|i| i * 7 + me as u64)
            .collect();
        let r_gv = w.igather_varcount(root, mine.clone(), &cv)?;
        let r_sv = w.iscatter_varcount(
            root,
            if me == root {
                whole.clone()
            } else {
                Vec::new()
            },
            &cv,
        )?;
        let r_agv = w.iall_gather_varcount(mine.clone(), &cv)?;
        let r_a2av = w.iall_to_all_varcount(a2av.clone(), &sc, &rc)?;
        let gv = w.gather_varcount(root, &mine)?;
        let sv = w.scatter_varcount(root, (me == root).then_some((&whole[..], &cv[..])))?;
        let (agv, _) = w.all_gather_varcount(&mine)?;
        let (a2a_back, got_rc) = w.all_to_all_varcount(&a2av, &sc)?;
        assert_eq!(got_rc, rc);
        assert_eq!(r_a2av.wait()?, a2a_back, "iall_to_all_varcount {len}");
        assert_eq!(r_agv.wait()?, agv, "iall_gather_varcount {len}");
        assert_eq!(r_sv.wait()?, sv, "iscatter_varcount {len}");
        assert_eq!(r_gv.wait()?, gv.map(|(v, _)| v), "igather_varcount {len}");
    }

    // Thousands in flight: no thread each.
    let many = arg(2, 3000) as usize;
    let sums: Vec<_> = (0..many as u64)
        .map(|i| w.iall_reduce(vec![i, 1], Sum))
        .collect();
    let bars: Vec<_> = (0..many).map(|_| w.ibarrier()).collect();
    ranks::wait_all(bars)?;
    for (i, v) in ranks::wait_all(sums)?.into_iter().enumerate() {
        assert_eq!(v, vec![i as u64 * n as u64, n as u64]);
    }

    // The progress rule: the last rank sends to rank 0 only after its barrier completes,
    // which needs rank 0's part; rank 0 meanwhile blocks in the receive.
    if n > 1 {
        let bar = w.ibarrier();
        if me == 0 {
            let (v, _): (u64, _) = w.recv(n - 1, 77)?;
            assert_eq!(v, 77);
            bar.wait()?;
        } else {
            bar.wait()?;
            if me == n - 1 {
                w.send(0, 77, &77u64)?;
            }
        }
    }
    println!("nbc ok rank {me}");
    Ok(())
}

fn ssend(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    for len in [0usize, 1, 100, 5000, 1 << 17] {
        let data: Vec<u64> = (0..len as u64).collect();
        if me == 0 {
            let mut pending = Vec::new();
            for peer in 1..n {
                pending.push(w.issend_slice(peer, 1, &data)?);
            }
            for _ in 0..10 {
                let mut still = Vec::new();
                for r in pending {
                    match r.test()? {
                        Ok(()) => panic!("an issend of {len} values completed before its receive"),
                        Err(r) => still.push(r),
                    }
                }
                pending = still;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for peer in 1..n {
                w.send(peer, 2, &"go")?;
            }
            for r in pending {
                r.wait()?;
            }
            for peer in 1..n {
                let (back, _) = w.recv_vec::<u64>(peer, 3)?;
                assert_eq!(back, data);
            }
        } else {
            let _: (String, _) = w.recv(0, 2)?;
            let (got, _) = w.recv_vec::<u64>(0, 1)?;
            assert_eq!(got, data);
            w.ssend_slice(0, 3, &got)?;
        }
    }
    // Serde: a blocking ssend and an issend, received in the opposite order.
    if me == 0 {
        let early = w.issend(1 % n, 5, &format!("second from {me}"))?;
        w.ssend(1 % n, 4, &"first".to_string())?;
        early.wait()?;
    } else if me == 1 {
        assert_eq!(w.recv::<String>(0, 4)?.0, "first");
        assert_eq!(w.recv::<String>(0, 5)?.0, "second from 0");
    }
    w.barrier()?;
    println!("ssend ok rank {me}");
    Ok(())
}

/// Rank 0 stays out of `ranks` longer than QUIC's idle timeout (5 s) while rank 1 sends to it
/// and waits for the answer: the connection must live through it (something has to answer
/// the peer's keep-alives), and nothing sent meanwhile may be lost.
fn compute(w: &Comm) -> R {
    let me = w.rank();
    let away = std::time::Duration::from_millis(arg(2, 6500));
    if me == 0 {
        std::thread::sleep(away);
        let (v, _) = w.recv::<u64>(1, 9)?;
        w.send(1, 9, &(v + 1))?;
        // Now the other way round: rank 1 is away while rank 0 sends and waits.
        w.send_slice(1, 10, &vec![7u64; 1 << 16])?;
        let (v, _) = w.recv::<u64>(1, 11)?;
        assert_eq!(v, 7 << 16);
    } else if me == 1 {
        w.send(0, 9, &41u64)?;
        let (v, _) = w.recv::<u64>(0, 9)?;
        assert_eq!(v, 42);
        std::thread::sleep(away);
        let (v, _) = w.recv_vec::<u64>(0, 10)?;
        w.send(0, 11, &v.iter().sum::<u64>())?;
    }
    println!("compute ok rank {me}");
    Ok(())
}

/// `held_isend`: small nonblocking sends whose sender then stays out of the library still
/// leave (over QUIC their frames are held back until the next wait): rank 0 sends rank 1
/// one message and waits for it (complete at once), another without waiting, then sleeps
/// a second each time without calling in; rank 1 answers each, and rank 0's first look
/// after its sleep must find the answer there.
fn held_isend(w: &Comm) -> R {
    let nap = std::time::Duration::from_secs(1);
    match w.rank() {
        0 => {
            w.isend(1, 1, &11u32)?.wait()?;
            std::thread::sleep(nap);
            assert!(w.iprobe(1, 2)?.is_some(), "no answer to a send waited for");
            assert_eq!(w.recv::<u32>(1, 2)?.0, 12);
            let pending = w.isend(1, 3, &13u32)?;
            std::thread::sleep(nap);
            assert!(
                w.iprobe(1, 4)?.is_some(),
                "no answer to a send not waited for"
            );
            assert_eq!(w.recv::<u32>(1, 4)?.0, 14);
            pending.wait()?;
        }
        1 => {
            assert_eq!(w.recv::<u32>(0, 1)?.0, 11);
            w.send(0, 2, &12u32)?;
            assert_eq!(w.recv::<u32>(0, 3)?.0, 13);
            w.send(0, 4, &14u32)?;
        }
        _ => {}
    }
    println!("held_isend ok rank {}", w.rank());
    Ok(())
}

/// `getenv NAME`: each rank prints `getenv RANK VALUE` (`<unset>` when it has none).
fn getenv(w: &Comm) -> R {
    let name = std::env::args().nth(2).unwrap_or_default();
    let value = std::env::var(&name).unwrap_or_else(|_| "<unset>".into());
    println!("getenv {} {value}", w.rank());
    Ok(())
}

fn sleep(w: &Comm) -> R {
    let _ = w.rank();
    std::thread::sleep(std::time::Duration::from_secs(arg(2, 30)));
    Ok(())
}

/// Where each rank runs: its host name in the job and how many ranks share that host.
fn where_(w: &Comm) -> R {
    let host = w.host().to_string();
    let local = w.split_by_host()?;
    let names = w.gather(0, &host)?;
    if let Some(names) = names {
        for (r, h) in names.iter().enumerate() {
            println!("where rank {r} on {h}");
        }
    }
    println!(
        "where rank {} shares its host with {} rank(s)",
        w.rank(),
        local.size()
    );
    w.barrier()
}

/// A token goes around the ring ARG times; every rank adds 1.
fn ring(w: &Comm) -> R {
    let rounds = arg(2, 1000);
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let mut token = 0u64;
    for _ in 0..rounds {
        if me == 0 {
            w.send(next, 0, &(token + 1))?;
            token = w.recv::<u64>(prev, 0)?.0;
        } else {
            token = w.recv::<u64>(prev, 0)?.0;
            w.send(next, 0, &(token + 1))?;
        }
    }
    if me == 0 {
        assert_eq!(token, rounds * n as u64);
        println!("ring ok {token}");
    }
    Ok(())
}

/// Nonblocking requests, test, wait_all, sendrecv.
fn nonblocking(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    let next = (me + 1) % n;
    let prev = (me + n - 1) % n;
    // Post receives first, then send: works for any ordering.
    let recvs: Vec<_> = (0..50)
        .map(|t| w.irecv::<(usize, i32)>(prev, t))
        .collect::<Result<_, _>>()?;
    let big = vec![me as u32; 1 << 18];
    let big_recv = w.irecv_vec::<u32>(prev, 100)?;
    let sends: Vec<_> = (0..50)
        .rev()
        .map(|t| w.isend(next, t, &(me, t)))
        .collect::<Result<_, _>>()?;
    let big_send = w.isend_slice(next, 100, &big)?;
    let got = ranks::wait_all(recvs)?;
    for (t, ((from, tag), st)) in got.into_iter().enumerate() {
        assert_eq!(
            (from, tag, st.source, st.tag),
            (prev, t as i32, prev, t as i32)
        );
    }
    let (v, _) = big_recv.wait()?;
    assert!(v.len() == 1 << 18 && v.iter().all(|&x| x as usize == prev));
    ranks::wait_all(sends)?;
    big_send.wait()?;
    // test() on a receive that cannot complete yet, then completes.
    let mut pending = w.irecv::<String>(prev, 200)?;
    let early = pending.is_complete();
    w.barrier()?;
    w.send(next, 200, &format!("from {me}"))?;
    let (s, _) = pending.wait()?;
    assert_eq!(s, format!("from {prev}"));
    let _ = early;
    let (v, st) = w.sendrecv::<_, usize>(&me, next, 300, prev, 300)?;
    assert_eq!((v, st.source), (prev, prev));
    w.barrier()?;
    println!("nonblocking ok rank {me}");
    Ok(())
}

/// The textbook halo exchange: post both receives, then blocking sends of ARG u64s (1 MiB by
/// default, a rendezvous) to both neighbours, then wait. MPI's progress rule makes this
/// finish: a rank blocked in its send must still let its posted receives be pulled.
fn halo(w: &Comm) -> R {
    let len = arg(2, 1 << 17) as usize;
    let rounds = arg(3, 3);
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    for round in 0..rounds {
        let rl = w.irecv_vec::<u64>(prev, 0)?;
        let rr = w.irecv_vec::<u64>(next, 1)?;
        let mine = |to: usize| vec![(me * 1000 + to) as u64 + round; len];
        w.send_slice(next, 0, &mine(next))?;
        w.send_slice(prev, 1, &mine(prev))?;
        let (l, _) = rl.wait()?;
        let (r, _) = rr.wait()?;
        assert_eq!(l, vec![(prev * 1000 + me) as u64 + round; len], "from left");
        assert_eq!(
            r,
            vec![(next * 1000 + me) as u64 + round; len],
            "from right"
        );
    }
    println!("halo ok rank {me}");
    Ok(())
}

/// Who pulls the rendezvous messages of a set of receives one thread waits on (`wait_all`,
/// `wait_any`, `wait_some`, and polling with `test_any`, `test_some`). Rank 0 sends rank 1
/// K messages of ARG u32s (256 KiB by default, a rendezvous in shared memory) for tags
/// 1..=K after 50 ms and tag 0 50 ms later, once for each of the five; rank 1 waits for all
/// K+1 with each in turn. While it waits, the messages that are there are pulled by rank 1's thread straight into their
/// own buffers: none goes through a buffer of progress's own (before, after the wait's
/// first spin progress pulled each into a new buffer and the receive copied it again). On
/// 3 ranks or more, a wait that needs a pull of the same set to end: rank 0 sends rank 1
/// tag K+1 with a blocking send and only then tells rank 2, which only then sends rank 1
/// the message its set waits for first.
fn own_pulls(w: &Comm) -> R {
    let len = arg(2, 1 << 16) as usize;
    const K: usize = 8;
    let me = w.rank();
    let n = w.size();
    let fill = |tag: usize| (tag * 1000 + 7) as u32;
    // The set waited for whole, then one at a time, then some at a time.
    let modes = ["wait_all", "wait_any", "wait_some", "test_any", "test_some"];
    match me {
        0 => {
            let data: Vec<Vec<u32>> = (0..=K).map(|t| vec![fill(t); len]).collect();
            for _ in modes {
                // The others arrive while rank 1 has waited a while already (when progress
                // used to take them), the one it waits for first later still.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let mut sends = Vec::new();
                for (t, d) in data.iter().enumerate().skip(1) {
                    sends.push(w.isend_slice(1, t as i32, d)?);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
                sends.push(w.isend_slice(1, 0, &data[0])?);
                ranks::wait_all(sends)?;
            }
            if n >= 3 {
                w.send_slice(1, K as i32 + 1, &vec![fill(K + 1); len])?;
                w.send(2, 0, &"go")?;
            }
        }
        1 => {
            for mode in modes {
                let mut bufs = vec![vec![0u32; len]; K + 1];
                {
                    let mut reqs = bufs
                        .iter_mut()
                        .enumerate()
                        .map(|(t, b)| w.irecv_into(0, t as i32, b))
                        .collect::<Result<Vec<_>, _>>()?;
                    match mode {
                        "wait_all" => drop(ranks::wait_all(reqs)?),
                        "wait_any" => {
                            while let Some((_, r)) = ranks::wait_any(&mut reqs) {
                                r?;
                            }
                        }
                        "wait_some" => {
                            while !reqs.is_empty() {
                                for (_, r) in ranks::wait_some(&mut reqs) {
                                    r?;
                                }
                            }
                        }
                        "test_any" => {
                            while !reqs.is_empty() {
                                if let Some((_, r)) = ranks::test_any(&mut reqs) {
                                    r?;
                                }
                            }
                        }
                        _ => {
                            while !reqs.is_empty() {
                                for (_, r) in ranks::test_some(&mut reqs) {
                                    r?;
                                }
                            }
                        }
                    }
                }
                for (t, b) in bufs.iter().enumerate() {
                    assert!(b.iter().all(|&x| x == fill(t)), "{mode}: tag {t}");
                }
                assert_eq!(
                    w.staged_pulls(),
                    0,
                    "{mode}: receives waited for in a set were pulled through another buffer"
                );
            }
            if n >= 3 {
                let mut first = vec![0u32; len];
                let mut second = vec![0u32; len];
                let reqs = vec![
                    w.irecv_into(2, 0, &mut first)?,
                    w.irecv_into(0, K as i32 + 1, &mut second)?,
                ];
                ranks::wait_all(reqs)?;
                assert!(first.iter().all(|&x| x == 2), "from rank 2");
                assert!(second.iter().all(|&x| x == fill(K + 1)), "from rank 0");
            }
        }
        2 => {
            let (go, _) = w.recv::<String>(0, 0)?;
            assert_eq!(go, "go");
            w.send_slice(1, 0, &vec![2u32; len])?;
        }
        _ => {}
    }
    println!("own_pulls ok rank {me}");
    Ok(())
}

/// Large messages into posted receives, completed in the opposite order to their sending:
/// each rank posts receives for K messages from its left neighbour (into buffers, as vectors
/// and as serde values), sends K to its right with blocking sends, and waits last-first.
fn posted_large(w: &Comm) -> R {
    let len = arg(2, 1 << 16) as usize;
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    const K: usize = 4;
    let mut bufs = vec![vec![0u32; len]; K];
    let mut into = Vec::new();
    for (k, b) in bufs.iter_mut().enumerate().take(2) {
        into.push(w.irecv_into(prev, k as i32, b)?);
    }
    let as_vec = w.irecv_vec::<u32>(prev, 2)?;
    let as_serde = w.irecv::<Vec<u32>>(prev, 3)?;
    for k in 0..K {
        let data = vec![(me * 10 + k) as u32; len];
        if k == 3 {
            w.send(next, k as i32, &data)?;
        } else {
            w.send_slice(next, k as i32, &data)?;
        }
    }
    let (s, _) = as_serde.wait()?;
    assert_eq!(s, vec![(prev * 10 + 3) as u32; len]);
    let (v, _) = as_vec.wait()?;
    assert_eq!(v, vec![(prev * 10 + 2) as u32; len]);
    for r in into.into_iter().rev() {
        let st = r.wait()?;
        assert_eq!(st.len, len * 4);
    }
    for (k, b) in bufs.iter().take(2).enumerate() {
        assert!(b.iter().all(|&x| x == (prev * 10 + k) as u32), "buffer {k}");
    }
    w.barrier()?;
    println!("posted_large ok rank {me}");
    Ok(())
}

/// Posted receives into buffers, waited on in another order than posted: each message goes
/// to the oldest posted receive it matches (an earlier wildcard one takes it before a later
/// receive for its exact tag that is waited on first); a receive of the wrong element type or
/// with too small a buffer fails and leaves its message for the next receive. ARG: elements
/// per message (default 4; raise it, or the rendezvous threshold, to cover rendezvous).
/// Rank 0 waits on a receive into its own buffer (posted, then blocking) before rank 1 sends
/// the message, of `len` u32s: a waiting receive that finds its frame only partly written
/// waits for the rest in the ring only if the ring can hold it whole.
/// Large messages whose pulls may be shared with their senders, received every way a
/// rendezvous message lands (blocking into a vector and into a buffer, posted into a
/// vector and into a buffer), every byte checked. Then the rank prints how its shared
/// pulls went. `waiting`: a ring where every sender is in a blocking send while its
/// message is pulled. `busy DIR`: even ranks send to the odd rank above them and stay
/// out of the library (polling for a file the receiver makes in DIR) until the receive is
/// done, so the receiver pulls every byte itself.
/// `land_sets`: each rank posts 200 small receives from the rank before it, then the
/// rank after it sends them, and the receives are finished a quarter each by `test`
/// polling, `wait_any` and `wait_some`, an eighth each by `wait_all` and `test_some`
/// polling; every payload is checked.
/// Prints `landed RANK COUNT` (receives that took their message straight from the stream).
fn land_sets(w: &Comm) -> R {
    const M: usize = 200;
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let mut bufs = vec![[0u32; 2]; M];
    let mut reqs: Vec<_> = bufs
        .iter_mut()
        .enumerate()
        .map(|(k, b)| w.irecv_into(prev, k as i32, b))
        .collect::<Result<_, _>>()?;
    w.barrier()?;
    for k in 0..M {
        w.send_slice(next, k as i32, &[me as u32, k as u32])?;
    }
    let mut done = 0;
    let mut rest = reqs.split_off(M / 4);
    for r in reqs {
        let mut r = r;
        loop {
            match r.test()? {
                Ok(_) => break,
                Err(again) => r = again,
            }
        }
        done += 1;
    }
    let mut part = rest.split_off(M / 4);
    while let Some((_, st)) = ranks::wait_any(&mut rest) {
        st?;
        done += 1;
    }
    let mut last = part.split_off(M / 4);
    while !part.is_empty() {
        for (_, st) in ranks::wait_some(&mut part) {
            st?;
            done += 1;
        }
    }
    // `wait_all` before `test_some`, whose progress would take the frames of receives
    // outside its set into the queues.
    let mut polled = last.split_off(M / 8);
    done += ranks::wait_all(last)?.len();
    while !polled.is_empty() {
        for (_, st) in ranks::test_some(&mut polled) {
            st?;
            done += 1;
        }
    }
    assert_eq!(done, M);
    drop((rest, part, polled));
    for (k, b) in bufs.iter().enumerate() {
        assert_eq!(*b, [prev as u32, k as u32], "message {k} from {prev}");
    }
    println!("landed {me} {}", w.landed_receives());
    w.barrier()?;
    Ok(())
}

/// `sleepy_pingpong ITERS`: ranks 0 and 1 pass a counter back and forth; before each
/// send the sender keeps busy for a pseudo-random 0-511 us, so the receiver (run with a
/// short spin and no yields) goes to sleep at every moment of the sender's write and
/// doorbell in turn. Every value checked; other ranks only join the last barrier.
fn sleepy_pingpong(w: &Comm) -> R {
    let iters = arg(2, 20000);
    let me = w.rank();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ me as u64;
    let mut busy = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let until = std::time::Instant::now() + std::time::Duration::from_nanos(x % 512_000);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    };
    if me < 2 {
        let other = 1 - me;
        let mut buf = [0u64; 1];
        for i in 0..iters {
            if (i % 2 == 0) == (me == 0) {
                busy();
                w.send_slice(other, 0, &[i])?;
            } else {
                w.recv_into(other, 0, &mut buf)?;
                assert_eq!(buf[0], i, "rank {me} got {} as message {i}", buf[0]);
            }
        }
    }
    w.barrier()?;
    Ok(())
}

/// `poll_halo ITERS`: a halo exchange of small messages whose receives are finished by
/// polling `test`, then a message found by polling `iprobe`; every payload checked.
/// Prints `idle RANK COUNT` (looks that found nothing and gave the core away).
fn poll_halo(w: &Comm) -> R {
    let iters = arg(2, 1000);
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    for it in 0..iters {
        let (mut left, mut right) = ([0u64; 2], [0u64; 2]);
        let reqs = [
            w.irecv_into(prev, 0, &mut left)?,
            w.irecv_into(next, 1, &mut right)?,
        ];
        w.send_slice(next, 0, &[me as u64, it])?;
        w.send_slice(prev, 1, &[me as u64, it])?;
        for mut r in reqs {
            while let Err(again) = r.test()? {
                r = again;
            }
        }
        assert_eq!((left, right), ([prev as u64, it], [next as u64, it]));
        w.send(next, 2, &it)?;
        while w.iprobe(prev, 2)?.is_none() {}
        assert_eq!(w.recv::<u64>(prev, 2)?.0, it);
    }
    println!("idle {me} {}", w.idle_yields());
    Ok(())
}

fn shared_pull(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    let mode = std::env::args().nth(2).unwrap_or_default();
    // All rendezvous messages at the default threshold (256 KiB): 256 KiB, an odd size,
    // 1 MiB + 1, 4 MiB.
    let sizes = [256 << 10, 300_007, (1 << 20) + 1, 4 << 20];
    let byte = |from: usize, k: usize, i: usize| (from * 131 + k * 17 + i * 7 + i / 4099) as u8;
    let msg = |from: usize, k: usize| -> Vec<u8> {
        (0..sizes[k % 4]).map(|i| byte(from, k, i)).collect()
    };
    let check = |from: usize, k: usize, got: &[u8]| {
        assert_eq!(got.len(), sizes[k % 4], "message {k} from {from}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i] != byte(from, k, i)) {
            panic!(
                "message {k} from {from}: byte {i} of {} is wrong",
                got.len()
            );
        }
    };
    let recv = |from: usize, k: usize| -> Result<(), Error> {
        let tag = k as i32;
        match k % 4 {
            0 => check(from, k, &w.recv_vec::<u8>(from, tag)?.0),
            1 => {
                let mut buf = vec![0u8; sizes[k % 4]];
                w.recv_into(from, tag, &mut buf)?;
                check(from, k, &buf);
            }
            2 => check(from, k, &w.irecv_vec::<u8>(from, tag)?.wait()?.0),
            _ => {
                let mut buf = vec![0u8; sizes[k % 4]];
                w.irecv_into(from, tag, &mut buf)?.wait()?;
                check(from, k, &buf);
            }
        }
        Ok(())
    };
    const ROUNDS: usize = 8;
    match mode.as_str() {
        "waiting" => {
            let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
            for k in 0..ROUNDS {
                // Receive first on odd ranks, send first on even ones: every send waits for
                // its receiver (which, in a ring of odd size, may itself be sending).
                if me % 2 == 1 {
                    recv(prev, k)?;
                    w.send_slice(next, k as i32, &msg(me, k))?;
                } else {
                    let data = msg(me, k);
                    let r = w.isend_slice(next, k as i32, &data)?;
                    recv(prev, k)?;
                    r.wait()?;
                }
            }
        }
        "busy" => {
            let dir = std::path::PathBuf::from(std::env::args().nth(3).expect("busy DIR"));
            let flag = |k: usize| dir.join(format!("got-{}-{k}", me | 1));
            if me % 2 == 0 && me + 1 < n {
                for k in 0..ROUNDS {
                    let data = msg(me, k);
                    let r = w.isend_slice(me + 1, k as i32, &data)?;
                    let t0 = std::time::Instant::now();
                    while !flag(k).exists() {
                        assert!(t0.elapsed().as_secs() < 60, "no receive of message {k}");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    r.wait()?;
                }
            } else if me % 2 == 1 {
                for k in 0..ROUNDS {
                    recv(me - 1, k)?;
                    std::fs::write(flag(k), b"").expect("flag file");
                }
            }
        }
        other => panic!("unknown mode {other:?}"),
    }
    w.barrier()?;
    let (by_peer, back, for_peer) = w.shared_pulls();
    println!("shared_pull ok rank {me} written_by_peer={by_peer} pulled_back={back} written_for_peer={for_peer}");
    Ok(())
}

/// Rank 0 sends rank 1 more than its stream takes while rank 1 reads nothing, and rank 1
/// dies (SIGABRT) with the bytes unread. Rank 0's send fails, and rank 0 exits at once: its
/// writer to the dead rank, stuck on a full window, must not hold up its exit.
fn exit_after_loss(w: &Comm) -> R {
    match w.rank() {
        0 => {
            let big = vec![7u8; 96 << 20];
            let r = w.isend_slice(1, 1, &big)?;
            match r.wait() {
                Ok(()) => println!("exit_after_loss: rank 0's send completed"),
                Err(e) => println!("exit_after_loss: rank 0's send failed: {e}"),
            }
        }
        1 => {
            std::thread::sleep(std::time::Duration::from_millis(300));
            std::process::abort();
        }
        _ => {}
    }
    Ok(())
}

fn land_wait(w: &Comm) -> R {
    let len = arg(2, 4) as usize;
    let mut buf = vec![0u32; len];
    if w.rank() == 0 {
        let r = w.irecv_into(1, 1, &mut buf)?;
        assert_eq!(r.wait()?.len, len * 4);
        assert!(buf.iter().enumerate().all(|(i, &v)| v == i as u32 + 1));
        assert_eq!(w.recv_into(1, 2, &mut buf)?.len, len * 4);
        assert!(buf.iter().enumerate().all(|(i, &v)| v == i as u32 + 2));
    } else if w.rank() == 1 {
        for tag in [1, 2] {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let data: Vec<u32> = (0..len as u32).map(|i| i + tag as u32).collect();
            w.send_slice(0, tag, &data)?;
        }
    }
    w.barrier()?;
    println!("land_wait ok rank {}", w.rank());
    Ok(())
}

/// `land_window`: each rank posts a window of 64 receives of tag 3 from the rank before it
/// (buffers of four u32), then a receive of tag 4 from it; after a barrier each sends the
/// rank after it 32 messages of tag 3, one of tag 4, and 32 more of tag 3, with blocking
/// sends of 1 to 4 u32, and waits 20 ms (so that the messages are in the stream) before
/// `wait_all` of the window. The tag-4 message is between the window's messages in the
/// stream; it must reach its own receive, and the window's receives theirs in order. Every
/// value and length is checked. Prints `landed RANK COUNT` and `land_window ok rank RANK`.
fn land_window(w: &Comm) -> R {
    const K: usize = 64;
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let value = |from: usize, k: usize, i: usize| (from * 1000 + k * 10 + i) as u32;
    let len = |k: usize| k % 4 + 1;
    let mut bufs = vec![[0u32; 4]; K];
    let mut odd = [0u32; 1];
    let window = bufs
        .iter_mut()
        .map(|b| w.irecv_into(prev, 3, b))
        .collect::<Result<Vec<_>, _>>()?;
    let between = w.irecv_into(prev, 4, &mut odd)?;
    w.barrier()?;
    for k in 0..K {
        if k == K / 2 {
            w.send_slice(next, 4, &[me as u32])?;
        }
        let data: Vec<u32> = (0..len(k)).map(|i| value(me, k, i)).collect();
        w.send_slice(next, 3, &data)?;
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let got = ranks::wait_all(window)?;
    assert_eq!(between.wait()?.len, 4);
    assert_eq!(odd, [prev as u32]);
    for (k, (b, st)) in bufs.iter().zip(&got).enumerate() {
        assert_eq!(st.len, len(k) * 4, "message {k}'s length");
        let want: Vec<u32> = (0..len(k)).map(|i| value(prev, k, i)).collect();
        assert_eq!(b[..len(k)], want[..], "message {k} from {prev}");
    }
    println!("landed {me} {}", w.landed_receives());
    w.barrier()?;
    println!("land_window ok rank {me}");
    Ok(())
}

/// `land_parts [LEN]`: rank 1 sends rank 0 four messages of LEN u32s (default 1 Mi: 4 MiB)
/// with blocking sends, right after a barrier; rank 0 posted receives into buffers for them
/// before the barrier, and waits for the first two one by one and for the last two with
/// `wait_all`. Every value is checked. Rank 0 prints `landed 0 COUNT` (receives that took
/// their message straight from the stream into their buffer).
fn land_parts(w: &Comm) -> R {
    const K: usize = 4;
    let len = arg(2, 1 << 20) as usize;
    let me = w.rank();
    let value = |k: usize, i: usize| (i as u32).wrapping_mul(k as u32 + 1);
    if me == 0 {
        let mut bufs = vec![vec![0u32; len]; K];
        let mut first = bufs
            .iter_mut()
            .enumerate()
            .map(|(k, b)| w.irecv_into(1, k as i32, b))
            .collect::<Result<Vec<_>, _>>()?;
        w.barrier()?;
        let rest = first.split_off(2);
        for r in first {
            assert_eq!(r.wait()?.len, len * 4);
        }
        for st in ranks::wait_all(rest)? {
            assert_eq!(st.len, len * 4);
        }
        for (k, b) in bufs.iter().enumerate() {
            let wrong = b.iter().enumerate().position(|(i, &v)| v != value(k, i));
            assert_eq!(wrong, None, "message {k}: first wrong value");
        }
        println!("landed 0 {}", w.landed_receives());
    } else {
        w.barrier()?;
        if me == 1 {
            for k in 0..K {
                let data: Vec<u32> = (0..len).map(|i| value(k, i)).collect();
                w.send_slice(0, k as i32, &data)?;
            }
        }
    }
    w.barrier()?;
    println!("land_parts ok rank {me}");
    Ok(())
}

fn posted_order(w: &Comm) -> R {
    let len = arg(2, 4) as usize;
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let (mut a, mut b) = (vec![0u32; len], vec![0u32; len]);
    let (mut wrong_type, mut short) = (vec![0u64; len], vec![0u32; len]);
    let ra = w.irecv_into(prev, ANY_TAG, &mut a)?;
    let rb = w.irecv_into(prev, 5, &mut b)?;
    let rd = w.irecv_into(prev, 6, &mut wrong_type)?;
    let re = w.irecv_into(prev, 7, &mut short)?;
    w.barrier()?;
    // Nonblocking sends: the failed receives release their messages only as they fail.
    let stamp = |k: u32| vec![me as u32 * 100 + k; len];
    let out = [stamp(1), stamp(2), stamp(3), [stamp(4), stamp(4)].concat()];
    let mut sends = Vec::new();
    for (tag, data) in [5, 5, 6, 7].into_iter().zip(&out) {
        sends.push(w.isend_slice(next, tag, data)?);
    }
    let theirs = |k: u32| vec![prev as u32 * 100 + k; len];
    // The receive for tag 5 first: the first tag-5 message went to the wildcard before it.
    let st = rb.wait()?;
    assert_eq!((st.tag, st.len), (5, len * 4));
    let st = ra.wait()?;
    assert_eq!((st.tag, st.len), (5, len * 4));
    match rd.wait() {
        Err(Error::TypeMismatch { tag: 6, .. }) => {}
        other => panic!("a u32 message into a u64 receive: {other:?}"),
    }
    match re.wait() {
        Err(Error::Truncated { tag: 7, len: l, .. }) if l == len * 8 => {}
        other => panic!("a message twice the buffer: {other:?}"),
    }
    assert_eq!(b, theirs(2), "the receive for tag 5 got the second");
    assert_eq!(
        a,
        theirs(1),
        "the wildcard receive posted first got the first"
    );
    // Both failed receives left their messages for the next receive.
    let mut six = vec![0u32; len];
    assert_eq!(w.recv_into(prev, 6, &mut six)?.len, len * 4);
    assert_eq!(six, theirs(3));
    let (seven, _) = w.recv_vec::<u32>(prev, 7)?;
    assert_eq!(seven, [theirs(4), theirs(4)].concat());
    ranks::wait_all(sends)?;
    w.barrier()?;
    println!("posted_order ok rank {me}");
    Ok(())
}

/// Two ranks each send the other a large message with a blocking send while the other's
/// receive was posted before as a nonblocking one; plus a wildcard posted receive.
fn head_to_head(w: &Comm) -> R {
    let len = arg(2, 1 << 18) as usize;
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let any = w.irecv_vec::<u8>(ranks::ANY_SOURCE, 9)?;
    w.send_slice(next, 9, &vec![me as u8; len])?;
    let (v, st) = any.wait()?;
    assert_eq!(st.source, prev);
    assert!(v.len() == len && v.iter().all(|&b| b == prev as u8));
    println!("head_to_head ok rank {me}");
    Ok(())
}

/// All-reductions whose ranks disagree on the element type, then on the length: every rank
/// gets a `CollectiveMismatch` (its own finding) or a `CollectiveFailed` (another's), none
/// hangs, none gets a result, and a right one afterwards still works. Prints
/// "reduce_mismatch ok".
fn reduce_mismatch(w: &Comm) -> R {
    let me = w.rank();
    // What a rank may get when members disagree: its own finding (a type or a length that
    // does not match), or another member's notice that it failed (by messages, the ranks
    // that never saw the wrong operand themselves).
    let mismatch = |e: &Error| {
        matches!(
            e,
            Error::CollectiveMismatch { .. }
                | Error::InvalidArgument(_)
                | Error::CollectiveFailed { .. }
        )
    };
    let e = if me == 0 {
        w.all_reduce_slice(&[1.5f64], &mut [0f64], &ranks::op::Sum)
    } else {
        w.all_reduce_slice(&[1u64], &mut [0u64], &ranks::op::Sum)
    }
    .expect_err("f64 on rank 0, u64 elsewhere");
    println!("rank {me} types: {e}");
    assert!(mismatch(&e), "{e:?}");
    let len = if me == 0 { 2 } else { 1 };
    let e = w
        .all_reduce_slice(&vec![1u64; len], &mut vec![0u64; len], &ranks::op::Sum)
        .expect_err("two items on rank 0, one elsewhere");
    println!("rank {me} lengths: {e}");
    assert!(mismatch(&e), "{e:?}");
    // A broadcast of another type than the others expect: the root is done when it has
    // sent; every other rank fails, also those the root does not send to.
    let r = if me == 0 {
        w.broadcast_slice(0, &mut [2.5f64; 3])
    } else {
        w.broadcast_slice(0, &mut [0u64; 3])
    };
    match (me, r) {
        (0, r) => r?,
        (_, Ok(())) => panic!("rank {me}: a broadcast of f64 into u64 succeeded"),
        (_, Err(e)) => {
            println!("rank {me} broadcast: {e}");
            assert!(mismatch(&e), "{e:?}");
        }
    }
    // A prefix reduction: rank 0 only sends, so it may finish; every other rank fails
    // (by messages, those past rank 1 on rank 1's notice).
    let r = if me == 0 {
        w.scan_slice(&[1.5f64], &mut [0f64], &ranks::op::Sum)
    } else {
        w.scan_slice(&[1u64], &mut [0u64], &ranks::op::Sum)
    };
    match (me, r) {
        (0, Ok(())) => {}
        (_, Ok(())) => panic!("rank {me}: a scan over f64 and u64 succeeded"),
        (_, Err(e)) => {
            println!("rank {me} scan: {e}");
            assert!(mismatch(&e), "{e:?}");
        }
    }
    // A gather of 256 KiB blocks of another type than the root expects: the root fails.
    // In shared memory a block that large is a rendezvous (its sender waits until the root
    // takes it), and the senders fail on the root's notice instead of waiting for ever;
    // over sockets it is sent whole, and they may be done.
    let k = 32 * 1024;
    let r = if me == 0 {
        w.gather_slice(0, &vec![1u64; k], &mut vec![0u64; k * w.size()])
    } else {
        w.gather_slice(0, &vec![1.5f64; k], &mut [])
    };
    match (me, r) {
        (0, Ok(())) => panic!("the root gathered f64 blocks as u64"),
        (_, Ok(())) => println!("rank {me} gather: sent"),
        (_, Err(e)) => {
            println!("rank {me} gather: {e}");
            assert!(mismatch(&e), "{e:?}");
        }
    }
    // A nonblocking all-reduction: every rank fails too (before, its schedule took the
    // other ranks' bytes as its own type and gave a wrong sum).
    let e = if me == 0 {
        w.iall_reduce(vec![1.5f64], ranks::op::Sum)
            .wait()
            .map(|_| ())
    } else {
        w.iall_reduce(vec![1u64], ranks::op::Sum).wait().map(|_| ())
    }
    .expect_err("f64 on rank 0, u64 elsewhere");
    println!("rank {me} iall_reduce: {e}");
    assert!(mismatch(&e), "{e:?}");
    // A reduce-scatter (a ring by messages): every rank fails.
    let n = w.size();
    let counts = vec![1; n];
    let e = if me == 0 {
        w.reduce_scatter_slice(&vec![1.5f64; n], &mut [0f64], &counts, &ranks::op::Sum)
    } else {
        w.reduce_scatter_slice(&vec![1u64; n], &mut [0u64], &counts, &ranks::op::Sum)
    }
    .expect_err("f64 on rank 0, u64 elsewhere");
    println!("rank {me} reduce_scatter: {e}");
    assert!(mismatch(&e), "{e:?}");
    let mut out = [0u64];
    w.all_reduce_slice(&[me as u64], &mut out, &ranks::op::Sum)?;
    let n = w.size() as u64;
    assert_eq!(out[0], n * (n - 1) / 2);
    w.barrier()?;
    if me == 0 {
        println!("reduce_mismatch ok");
    }
    Ok(())
}

/// The collectives of serde values when the last rank's values are `i64` and everyone
/// else's `u64` (the same bytes for small numbers): every rank that takes the odd rank's
/// value, or whose value the odd rank takes, must get an error, and so must every rank that
/// waits for a result that cannot come; afterwards the communicator works. Before, the odd
/// values were decoded as they came (1 read as -1) and a reduction tree whose inner rank
/// failed left the ranks above it waiting for ever. Prints "serde_mismatch ok".
fn serde_mismatch(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    assert!(n >= 2, "serde_mismatch needs 2 ranks or more");
    let odd = me == n - 1;
    let mismatch = |e: &Error| {
        matches!(
            e,
            Error::CollectiveMismatch { .. } | Error::CollectiveFailed { .. }
        )
    };
    let fails = |what: &str, r: Result<(), Error>| {
        let e = r.expect_err(what);
        println!("rank {me} {what}: {e}");
        assert!(mismatch(&e), "{what}: {e:?}");
    };
    // All-reduce: every rank fails (those above the rank that found it on its notice).
    let r = if odd {
        w.all_reduce(1i64, |a, b| a + b).map(|_| ())
    } else {
        w.all_reduce(1u64, |a, b| a + b).map(|_| ())
    };
    fails("all_reduce", r);
    // Reduce to rank 0: the root fails; a rank that only sent may be done.
    let r = if odd {
        w.reduce(0, 1i64, |a, b| a + b).map(|v| v.is_some())
    } else {
        w.reduce(0, 1u64, |a, b| a + b).map(|v| v.is_some())
    };
    match (me, r) {
        (0, r) => fails("reduce", r.map(|_| ())),
        (_, Ok(got)) => assert!(!got, "rank {me}: a reduce result off the root"),
        (_, Err(e)) => {
            println!("rank {me} reduce: {e}");
            assert!(mismatch(&e), "{e:?}");
        }
    }
    // Broadcast of u64 from rank 0: the odd rank fails, the others get it.
    if odd {
        let mut v = 0i64;
        fails("broadcast", w.broadcast(0, &mut v));
    } else {
        let mut v = if me == 0 { 42u64 } else { 0 };
        w.broadcast(0, &mut v)?;
        assert_eq!(v, 42, "rank {me}: broadcast");
    }
    // Gather to rank 0: the root fails, the others have sent.
    let r = if odd {
        w.gather(0, &5i64).map(|v| v.is_some())
    } else {
        w.gather(0, &5u64).map(|v| v.is_some())
    };
    match me {
        0 => fails("gather", r.map(|_| ())),
        _ => assert!(!r?, "rank {me}: a gather result off the root"),
    }
    // All-gather and all-to-all: every rank meets a block of the other type.
    let r = if odd {
        w.all_gather(&5i64).map(|_| ())
    } else {
        w.all_gather(&5u64).map(|_| ())
    };
    fails("all_gather", r);
    let r = if odd {
        w.all_to_all(vec![5i64; n]).map(|_| ())
    } else {
        w.all_to_all(vec![5u64; n]).map(|_| ())
    };
    fails("all_to_all", r);
    // Scatter of u64 from rank 0: the odd rank fails, the others get theirs.
    if odd {
        fails("scatter", w.scatter::<i64>(0, None).map(|_| ()));
    } else {
        let all = (me == 0).then(|| (0..n as u64).collect());
        assert_eq!(w.scatter::<u64>(0, all)?, me as u64, "rank {me}: scatter");
    }
    let total = w.all_reduce(me as u64, |a, b| a + b)?;
    assert_eq!(total, (n * (n - 1) / 2) as u64);
    w.barrier()?;
    if me == 0 {
        println!("serde_mismatch ok");
    }
    Ok(())
}

/// Small all-reductions on communicators that take each other's context id (and so the
/// same shared-memory slot) with other members: ranks 0..G (`slot_reuse ITERS G`, G 3 by
/// default), then, made by {0,1} alone, {0,1}, while rank 2 may still be reading the first
/// one's last operands (run it with `RANKS_TEST_SLOW_READ=2:2000`; with simulated hosts
/// `RANKS_TEST_HOSTS=0,0,0,1,1` and G 4, rank 2 reads its leader's result in a two-level
/// all-reduce). Every result is checked; prints "slot_reuse ok".
fn slot_reuse(w: &Comm) -> R {
    let iters = arg(2, 20);
    // The first communicator's size (3 by default): ranks 0..G.
    let g = arg(3, 3);
    let me = w.rank();
    assert!(
        w.size() as u64 >= g && g >= 3,
        "slot_reuse needs G >= 3 ranks or more"
    );
    let pair = w.subgroup(&[0, 1])?;
    let sum = |c: &Comm, j: u64| -> Result<u64, ranks::Error> {
        let mut out = [0u64; 4];
        let mine = [c.world_rank() as u64 * 100 + j; 4];
        c.all_reduce_slice(&mine, &mut out, &ranks::op::Sum)?;
        Ok(out[3])
    };
    for it in 0..iters {
        // The others take part too (in a communicator of their own), so that every
        // iteration's first communicator and pair get the same id.
        let mine = me as u64 >= g;
        let c = w
            .split(Some(u32::from(mine)), 0)?
            .expect("every rank has a color");
        if !mine {
            for j in 0..3 {
                let want = 100 * g * (g - 1) / 2 + g * (it * 10 + j);
                let got = sum(&c, it * 10 + j)?;
                assert_eq!(
                    got, want,
                    "rank {me}: the first communicator's all-reduce {j} of iteration {it}"
                );
            }
        }
        drop(c);
        if let Some(p) = &pair {
            let c = p.dup()?;
            let got = sum(&c, 7)?;
            assert_eq!(
                got,
                100 + 2 * 7,
                "rank {me}: the pair's all-reduce, iteration {it}"
            );
        }
    }
    w.barrier()?;
    if me == 0 {
        println!("slot_reuse ok");
    }
    Ok(())
}

/// Four threads of every rank stream ARG small messages each to the next rank on the same
/// communicator (thread `t` on tag `t`), blocking and nonblocking, while each receives its
/// own tag from the previous rank: all of them contend for the process's one core lock
/// (and sleep on it, with more threads than cores). Every value is checked.
fn threads_share_the_core(w: &Comm) -> R {
    const THREADS: usize = 4;
    let count = arg(2, 3000);
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || -> R {
                let tag = t as i32;
                let want = |i: u64| (prev as u64) << 48 | (t as u64) << 32 | i;
                let mut i = 0;
                while i < count {
                    // A window of eight nonblocking receives and sends, then a blocking pair.
                    let k = (count - i).min(8);
                    let mut bufs = vec![[0u64; 1]; k as usize];
                    let sends: Vec<[u64; 1]> = (0..k)
                        .map(|j| [(me as u64) << 48 | (t as u64) << 32 | (i + j)])
                        .collect();
                    let rs = bufs
                        .iter_mut()
                        .map(|b| w.irecv_into(prev, tag, b))
                        .collect::<Result<Vec<_>, _>>()?;
                    let ss = sends
                        .iter()
                        .map(|b| w.isend_slice(next, tag, b))
                        .collect::<Result<Vec<_>, _>>()?;
                    ranks::wait_all(rs)?;
                    ranks::wait_all(ss)?;
                    for (j, b) in bufs.iter().enumerate() {
                        assert_eq!(
                            b[0],
                            want(i + j as u64),
                            "thread {t}: message {}",
                            i + j as u64
                        );
                    }
                    i += k;
                    if i < count {
                        w.send_slice(next, tag, &[(me as u64) << 48 | (t as u64) << 32 | i])?;
                        let mut b = [0u64];
                        w.recv_into(prev, tag, &mut b)?;
                        assert_eq!(b[0], want(i), "thread {t}: message {i}");
                        i += 1;
                    }
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    w.barrier()?;
    println!("threads_share_the_core ok rank {me}");
    Ok(())
}

/// Eight threads, each with a communicator of its own, create communicators at the same
/// time (dup and split, ARG rounds each) and use them at once: no two may share a context
/// id, or their messages would cross.
fn dup_threads(w: &Comm) -> R {
    const THREADS: usize = 8;
    let rounds = arg(2, 20);
    let (me, n) = (w.rank(), w.size());
    let bases: Vec<Comm> = (0..THREADS).map(|_| w.dup()).collect::<Result<_, _>>()?;
    let handles: Vec<_> = bases
        .into_iter()
        .enumerate()
        .map(|(t, base)| {
            std::thread::spawn(move || -> R {
                for round in 0..rounds {
                    let c = if round % 2 == 0 {
                        base.dup()?
                    } else {
                        base.split(Some(0), -(base.rank() as i32))?
                            .expect("every rank takes part")
                    };
                    // Everyone sends its thread and round to its right on the new one.
                    let (next, prev) = ((c.rank() + 1) % n, (c.rank() + n - 1) % n);
                    let (got, _) = c.sendrecv::<_, (usize, u64)>(&(t, round), next, 0, prev, 0)?;
                    assert_eq!(
                        got,
                        (t, round),
                        "thread {t} round {round}: a message crossed"
                    );
                    let mut sum = [0u64];
                    c.all_reduce_slice(&[t as u64 + round], &mut sum, &ranks::op::Sum)?;
                    assert_eq!(sum[0], (t as u64 + round) * n as u64);
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread panicked")?;
    }
    println!("dup_threads ok rank {me}");
    Ok(())
}

/// The async forms from a tokio program.
fn asynchronous(w: &Comm) -> R {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let (me, n) = (w.rank(), w.size());
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        let recv = w.recv_async::<String>(prev, 1);
        w.send_async(next, 1, &format!("async hello from {me}"))
            .await?;
        let (s, st) = recv.await?;
        assert_eq!(s, format!("async hello from {prev}"));
        assert_eq!(st.source, prev);
        println!("async ok rank {me}");
        Ok(())
    })
}

/// Everything a world of one can do.
fn singleton(w: &Comm) -> R {
    assert_eq!((w.rank(), w.size()), (0, 1));
    w.send(0, 3, &vec![1u8, 2, 3])?;
    let (v, st) = w.recv::<Vec<u8>>(0, 3)?;
    assert_eq!((v, st.source, st.tag), (vec![1, 2, 3], 0, 3));
    let big = vec![9u64; 1 << 20];
    let r = w.isend_slice(0, 4, &big)?;
    let (b, _) = w.recv_vec::<u64>(ANY_SOURCE, ANY_TAG)?;
    r.wait()?;
    assert!(b == big);
    w.barrier()?;
    assert!(w.send(1, 0, &1u8).is_err());
    println!("singleton ok size {} transport {}", w.size(), w.transport());
    Ok(())
}

/// A client that trusts any server and shows a certificate of its own making.
#[derive(Debug)]
struct TrustAnything;

impl rustls::client::danger::ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Try to join rank 1's QUIC endpoint from outside the job, with a certificate of our own and
/// with none: both must be refused, and the job goes on.
fn forge(w: &Comm) -> R {
    if w.rank() == 0 {
        let dir = std::env::var("RANKS_DIR").expect("a quic job has a directory");
        // On another host, rank 1's address reaches this host's directory through the
        // launcher, possibly after rank 1 has already connected to us: wait for it.
        let file = format!("{dir}/r1.addr");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !std::path::Path::new(&file).exists() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let addr: std::net::SocketAddr = std::fs::read_to_string(&file)
            .expect("rank 1 published its address")
            .trim()
            .parse()
            .expect("an address");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ranks-job".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // A real job's credentials, of another job: its certificate is signed by its own CA.
        let other = ranks::transport::quic::job_credentials().expect("credentials");
        let file = |n: &str| other.iter().find(|(f, _)| f == n).expect("made").1.clone();
        let (other_cert, other_key) = (file("cert.der"), file("key.der"));
        for (what, with_cert) in [
            (
                "own certificate: true",
                Some((cert.der().to_vec(), key.serialize_der())),
            ),
            ("another job's certificate", Some((other_cert, other_key))),
            ("own certificate: false", None),
        ] {
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(std::sync::Arc::new(TrustAnything));
            let mut cfg = match with_cert {
                Some((c, k)) => builder
                    .with_client_auth_cert(
                        vec![c.into()],
                        rustls::pki_types::PrivateKeyDer::Pkcs8(k.into()),
                    )
                    .unwrap(),
                None => builder.with_no_client_auth(),
            };
            cfg.alpn_protocols = vec![b"ranks/1".to_vec()];
            let qc = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
            let outcome: Result<(), String> = rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap())
                        .map_err(|e| e.to_string())?;
                    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(qc)));
                    let conn = ep
                        .connect(addr, "ranks-job")
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    // Even if the handshake looked done from here, the server must not let us in.
                    let (mut tx, mut rx) = conn.open_bi().await.map_err(|e| e.to_string())?;
                    tx.write_all(&[0xffu8; 64])
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut b = [0u8; 8];
                    tokio::time::timeout(std::time::Duration::from_secs(3), rx.read_exact(&mut b))
                        .await
                        .map_err(|_| "no answer".to_string())?
                        .map_err(|e| e.to_string())
                })
                .await
                .map_err(|_| "timed out".to_string())?
            });
            match outcome {
                Ok(()) => panic!("a connection without the job's credentials got an answer"),
                Err(e) => println!("forged connection ({what}) refused: {e}"),
            }
        }
        w.send(1, 0, &"still here".to_string())?;
    } else if w.rank() == 1 {
        let (s, _) = w.recv::<String>(0, 0)?;
        assert_eq!(s, "still here");
        println!("job unaffected");
    }
    w.barrier()
}

/// Calls with known shapes for `--trace`: each rank sends 1000 x (rank + 1) bytes to the
/// next (tag 5); the others send rank 0 a value it takes by any-source (tag 9); everyone takes
/// a `Lock` owned by rank 0; the last rank sleeps 300 ms before a barrier. With `kill`, rank 1
/// SIGKILLs itself before the barrier.
fn traced(w: &Comm) -> R {
    let (me, n) = (w.rank(), w.size());
    let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
    let mine = vec![me as u8; 1000 * (me + 1)];
    let r = w.irecv_vec::<u8>(prev, 5)?;
    w.send_slice(next, 5, &mine)?;
    let (got, _) = r.wait()?;
    assert_eq!(got.len(), 1000 * (prev + 1));
    if me == 0 {
        for _ in 1..n {
            w.recv::<u64>(ANY_SOURCE, 9)?;
        }
    } else {
        w.send(0, 9, &(me as u64))?;
    }
    let lock = ranks::Lock::new(w, 0)?;
    drop(lock.acquire()?);
    if std::env::args().nth(2).as_deref() == Some("kill") && me == 1 {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    if me == n - 1 {
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    w.barrier()?;
    println!("traced ok");
    Ok(())
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let w = match ranks::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("init failed: {e}");
            std::process::exit(1);
        }
    };
    let r = match scenario.as_str() {
        "order" => order(&w),
        "shared_pull" => shared_pull(&w),
        "land_sets" => land_sets(&w),
        "poll_halo" => poll_halo(&w),
        "sleepy_pingpong" => sleepy_pingpong(&w),
        "exit_after_loss" => exit_after_loss(&w),
        "fanin" => fanin(&w),
        "sizes" => sizes(&w),
        "wildcard" => wildcard(&w),
        "mismatch" => mismatch(&w),
        "badargs" => badargs(&w),
        "toolarge" => toolarge(&w),
        "fail" => fail(&w),
        "abort" => abort(&w),
        "chatter" => chatter(&w),
        "peerlost" => peerlost(&w),
        "sleep" => sleep(&w),
        "getenv" => getenv(&w),
        "held_isend" => held_isend(&w),
        "compute" => compute(&w),
        "ssend" => ssend(&w),
        "groups" => groups(&w),
        "nbc" => nbc(&w),
        "cart" => cart(&w),
        "dies" => dies(&w),
        "requestsets" => request_sets(&w),
        "mprobe" => mprobe(&w),
        "persistent" => persistent(&w),
        "stuck" => stuck(&w),
        "chaos" => chaos(&w),
        "ring" => ring(&w),
        "nonblocking" => nonblocking(&w),
        "halo" => halo(&w),
        "own_pulls" => own_pulls(&w),
        "dup_threads" => dup_threads(&w),
        "threads_share_the_core" => threads_share_the_core(&w),
        "slot_reuse" => slot_reuse(&w),
        "reduce_mismatch" => reduce_mismatch(&w),
        "serde_mismatch" => serde_mismatch(&w),
        "posted_large" => posted_large(&w),
        "land_wait" => land_wait(&w),
        "land_parts" => land_parts(&w),
        "land_window" => land_window(&w),
        "posted_order" => posted_order(&w),
        "head_to_head" => head_to_head(&w),
        "async" => asynchronous(&w),
        "singleton" => singleton(&w),
        "forge" => forge(&w),
        "where" => where_(&w),
        "traced" => traced(&w),
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
