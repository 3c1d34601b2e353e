//! Collective checks against sequential references: `ranks run -n N ranks-testcoll`.
//! Every rank computes what every other rank contributes, so it knows the right answer.
//! A wrong result panics (non-zero exit); success prints "collectives ok on N ranks".

use ranks::op::{self, Op};
use ranks::{Comm, Error};
use serde::{Deserialize, Serialize};

type R = Result<(), Error>;

/// What rank `r` contributes at index `i` (small integers: sums are exact in f64 too).
fn x(r: usize, i: usize) -> i64 {
    ((r * 31 + i * 7) % 97) as i64 - 40
}

fn contrib(r: usize, len: usize) -> Vec<i64> {
    (0..len).map(|i| x(r, i)).collect()
}

/// Sequential reference: fold ranks `0..=upto` with `op` (lower rank first).
fn fold<T: Copy, O: Op<T>>(
    upto: usize,
    len: usize,
    mk: impl Fn(usize, usize) -> T,
    op: &O,
) -> Vec<T> {
    let mut acc: Vec<T> = (0..len).map(|i| mk(0, i)).collect();
    for r in 1..=upto {
        let mut next: Vec<T> = (0..len).map(|i| mk(r, i)).collect();
        op.combine(&acc, &mut next);
        acc = next;
    }
    acc
}

/// An associative, non-commutative operation: composing affine maps x -> a*x + b (mod p),
/// packed as a << 32 | b; `lo ∘ hi` applies `lo` first.
fn affine(lo: u64, hi: u64) -> u64 {
    const P: u64 = 1_000_003;
    let (a1, b1) = (lo >> 32, lo & 0xffff_ffff);
    let (a2, b2) = (hi >> 32, hi & 0xffff_ffff);
    let a = a2 * a1 % P;
    let b = (a2 * b1 + b2) % P;
    (a << 32) | b
}
fn affine_x(r: usize, i: usize) -> u64 {
    (((r * 13 + i) % 1000 + 2) as u64) << 32 | ((r * 7 + i * 3) % 1000) as u64
}

fn check_ops_i64(w: &Comm, len: usize) -> R {
    let (n, me) = (w.size(), w.rank());
    let mine = contrib(me, len);
    macro_rules! each_op {
        ($($op:expr),*) => {$({
            let op = $op;
            let want = fold(n - 1, len, x, &op);
            let mut got = vec![0i64; len];
            w.all_reduce_slice(&mine, &mut got, &op)?;
            assert_eq!(got, want, "all_reduce {} len {len}", stringify!($op));
            let root = len % n;
            let mut got = vec![0i64; if me == root { len } else { 0 }];
            w.reduce_slice(root, &mine, &mut got, &op)?;
            if me == root {
                assert_eq!(got, want, "reduce {} len {len}", stringify!($op));
            }
            let mut got = vec![0i64; len];
            w.scan_slice(&mine, &mut got, &op)?;
            assert_eq!(got, fold(me, len, x, &op), "scan {}", stringify!($op));
            let mut got = vec![0i64; len];
            w.exscan_slice(&mine, &mut got, &op)?;
            if me > 0 {
                assert_eq!(got, fold(me - 1, len, x, &op), "exscan {}", stringify!($op));
            }
        })*};
    }
    each_op!(
        op::Sum,
        op::Prod,
        op::Min,
        op::Max,
        op::LAnd,
        op::LOr,
        op::BAnd,
        op::BOr,
        op::BXor
    );
    // Floats through the same paths.
    let fx = |r: usize, i: usize| x(r, i) as f64 * 0.5;
    let mine_f: Vec<f64> = (0..len).map(|i| fx(me, i)).collect();
    let mut got = vec![0f64; len];
    w.all_reduce_slice(&mine_f, &mut got, &op::Sum)?;
    assert_eq!(got, fold(n - 1, len, fx, &op::Sum), "f64 sum");
    w.all_reduce_slice(&mine_f, &mut got, &op::Max)?;
    assert_eq!(got, fold(n - 1, len, fx, &op::Max), "f64 max");
    Ok(())
}

fn check_noncommutative(w: &Comm, len: usize) -> R {
    let (n, me) = (w.size(), w.rank());
    let o = op::user_ordered(affine);
    let mine: Vec<u64> = (0..len).map(|i| affine_x(me, i)).collect();
    let want = fold(n - 1, len, affine_x, &o);
    let mut got = vec![0u64; len];
    w.all_reduce_slice(&mine, &mut got, &o)?;
    assert_eq!(got, want, "non-commutative all_reduce len {len}");
    let root = n - 1;
    let mut got = vec![0u64; len];
    w.reduce_slice(root, &mine, &mut got, &o)?;
    if me == root {
        assert_eq!(got, want, "non-commutative reduce");
    }
    let mut got = vec![0u64; len];
    w.scan_slice(&mine, &mut got, &o)?;
    assert_eq!(got, fold(me, len, affine_x, &o), "non-commutative scan");
    // reduce_scatter with a non-commutative op goes through reduce + scatter.
    let counts: Vec<usize> = (0..n).map(|r| (r + len) % 3).collect();
    let total: usize = counts.iter().sum();
    let mine: Vec<u64> = (0..total).map(|i| affine_x(me, i)).collect();
    let mut got = vec![0u64; counts[me]];
    w.reduce_scatter_slice(&mine, &mut got, &counts, &o)?;
    let start: usize = counts[..me].iter().sum();
    assert_eq!(
        got,
        fold(n - 1, total, affine_x, &o)[start..start + counts[me]]
    );
    // The in-place forms give what the plain ones give, here with an operation whose order
    // matters (so the buffers really are each rank's own contribution).
    let mine: Vec<u64> = (0..len).map(|i| affine_x(me, i)).collect();
    let mut buf = mine.clone();
    w.reduce_in_place(root, &mut buf, &o)?;
    assert_eq!(
        buf,
        if me == root {
            want.clone()
        } else {
            mine.clone()
        },
        "reduce_in_place"
    );
    let mut buf = mine.clone();
    w.scan_in_place(&mut buf, &o)?;
    assert_eq!(buf, fold(me, len, affine_x, &o), "scan_in_place");
    let mut buf = mine.clone();
    w.exscan_in_place(&mut buf, &o)?;
    if me > 0 {
        assert_eq!(buf, fold(me - 1, len, affine_x, &o), "exscan_in_place");
    }
    let mine_all: Vec<u64> = (0..total).map(|i| affine_x(me, i)).collect();
    let mut buf = mine_all.clone();
    w.reduce_scatter_in_place(&mut buf, &counts, &o)?;
    assert_eq!(
        buf[start..start + counts[me]],
        fold(n - 1, total, affine_x, &o)[start..start + counts[me]],
        "reduce_scatter_in_place"
    );
    assert_eq!(buf[..start], mine_all[..start], "the rest stays");
    // Data movement in place: gather, scatter, all-gather, all-to-all against the plain ones.
    let k = len % 5 + 1;
    let block = |r: usize| -> Vec<u64> { (0..k).map(|i| affine_x(r, i)).collect() };
    let everyone: Vec<u64> = (0..n).flat_map(block).collect();
    for root in [0, n - 1] {
        let mut buf = if me == root {
            let mut b = vec![0u64; n * k];
            b[me * k..(me + 1) * k].copy_from_slice(&block(me));
            b
        } else {
            block(me)
        };
        w.gather_in_place(root, &mut buf)?;
        if me == root {
            assert_eq!(buf, everyone, "gather_in_place root {root}");
        }
        let mut buf = if me == root {
            everyone.clone()
        } else {
            vec![0u64; k]
        };
        w.scatter_in_place(root, &mut buf)?;
        if me == root {
            assert_eq!(buf, everyone, "scatter_in_place keeps the root's buffer");
        } else {
            assert_eq!(buf, block(me), "scatter_in_place root {root}");
        }
    }
    let mut buf = vec![0u64; n * k];
    buf[me * k..(me + 1) * k].copy_from_slice(&block(me));
    w.all_gather_in_place(&mut buf)?;
    assert_eq!(buf, everyone, "all_gather_in_place");
    // Block j of rank r: r * 1000 + j.
    let mut buf: Vec<u64> = (0..n)
        .flat_map(|j| vec![(me * 1000 + j) as u64; k])
        .collect();
    w.all_to_all_in_place(&mut buf)?;
    let want_a2a: Vec<u64> = (0..n)
        .flat_map(|j| vec![(j * 1000 + me) as u64; k])
        .collect();
    assert_eq!(buf, want_a2a, "all_to_all_in_place");
    // A commutative user closure.
    let add = op::user(|a: i64, b: i64| a + b);
    let mine = contrib(me, len);
    let mut got = vec![0i64; len];
    w.all_reduce_slice(&mine, &mut got, &add)?;
    assert_eq!(got, fold(n - 1, len, x, &op::Sum));
    Ok(())
}

fn check_data_movement(w: &Comm, len: usize) -> R {
    let (n, me) = (w.size(), w.rank());
    // broadcast from every root
    for root in [0, n - 1, n / 2] {
        let mut buf = if me == root {
            contrib(root, len)
        } else {
            vec![0; len]
        };
        w.broadcast_slice(root, &mut buf)?;
        assert_eq!(buf, contrib(root, len), "broadcast from {root}, len {len}");
    }
    // gather / scatter (equal blocks)
    let root = len % n;
    let mut all = vec![0i64; if me == root { len * n } else { 0 }];
    w.gather_slice(root, &contrib(me, len), &mut all)?;
    if me == root {
        let want: Vec<i64> = (0..n).flat_map(|r| contrib(r, len)).collect();
        assert_eq!(all, want, "gather len {len}");
    }
    let src: Vec<i64> = if me == root {
        (0..n).flat_map(|r| contrib(r + 100, len)).collect()
    } else {
        vec![]
    };
    let mut mine = vec![0i64; len];
    w.scatter_slice(root, &src, &mut mine)?;
    assert_eq!(mine, contrib(me + 100, len), "scatter len {len}");
    // all_gather
    let mut all = vec![0i64; len * n];
    w.all_gather_slice(&contrib(me, len), &mut all)?;
    assert_eq!(
        all,
        (0..n).flat_map(|r| contrib(r, len)).collect::<Vec<_>>(),
        "all_gather {len}"
    );
    // varcount forms: rank r contributes (len + r) % 5 items
    let vlen = |r: usize| (len + r) % 5;
    let (all, counts) = w.all_gather_varcount(&contrib(me, vlen(me)))?;
    assert_eq!(counts, (0..n).map(vlen).collect::<Vec<_>>());
    assert_eq!(
        all,
        (0..n).flat_map(|r| contrib(r, vlen(r))).collect::<Vec<_>>()
    );
    let g = w.gather_varcount(root, &contrib(me, vlen(me)))?;
    if me == root {
        let (all, counts) = g.expect("root gets the data");
        assert_eq!(counts, (0..n).map(vlen).collect::<Vec<_>>());
        assert_eq!(
            all,
            (0..n).flat_map(|r| contrib(r, vlen(r))).collect::<Vec<_>>()
        );
    } else {
        assert!(g.is_none());
    }
    let counts: Vec<usize> = (0..n).map(vlen).collect();
    let data: Vec<i64> = (0..n).flat_map(|r| contrib(r + 7, vlen(r))).collect();
    let mine = w.scatter_varcount(root, (me == root).then_some((&data[..], &counts[..])))?;
    assert_eq!(mine, contrib(me + 7, vlen(me)), "scatter_varcount");
    // all_to_all: block j of rank r is contrib(r * n + j)
    let k = len.min(50);
    let send: Vec<i64> = (0..n).flat_map(|j| contrib(me * n + j, k)).collect();
    let mut recv = vec![0i64; k * n];
    w.all_to_all_slice(&send, &mut recv)?;
    assert_eq!(
        recv,
        (0..n)
            .flat_map(|j| contrib(j * n + me, k))
            .collect::<Vec<_>>(),
        "all_to_all"
    );
    let scounts: Vec<usize> = (0..n).map(|j| (me + j + len) % 4).collect();
    let send: Vec<i64> = (0..n)
        .flat_map(|j| contrib(me * n + j, scounts[j]))
        .collect();
    let (recv, rcounts) = w.all_to_all_varcount(&send, &scounts)?;
    assert_eq!(
        rcounts,
        (0..n).map(|j| (j + me + len) % 4).collect::<Vec<_>>()
    );
    assert_eq!(
        recv,
        (0..n)
            .flat_map(|j| contrib(j * n + me, rcounts[j]))
            .collect::<Vec<_>>()
    );
    // reduce_scatter (commutative: the ring)
    let counts: Vec<usize> = (0..n).map(|r| (r * 3 + len) % 7).collect();
    let total: usize = counts.iter().sum();
    let mut got = vec![0i64; counts[me]];
    w.reduce_scatter_slice(&contrib(me, total), &mut got, &counts, &op::Sum)?;
    let start: usize = counts[..me].iter().sum();
    assert_eq!(
        got,
        fold(n - 1, total, x, &op::Sum)[start..start + counts[me]],
        "reduce_scatter"
    );
    Ok(())
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Particle {
    name: String,
    pos: [f64; 3],
    tags: Vec<u32>,
}

fn particle(r: usize) -> Particle {
    Particle {
        name: format!("p{r}"),
        pos: [r as f64, 0.5, -1.0],
        tags: (0..r as u32).collect(),
    }
}

fn check_serde(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    let mut p = if me == n - 1 {
        particle(99)
    } else {
        particle(me)
    };
    w.broadcast(n - 1, &mut p)?;
    assert_eq!(p, particle(99));
    let g = w.gather(0, &particle(me))?;
    if me == 0 {
        assert_eq!(g.unwrap(), (0..n).map(particle).collect::<Vec<_>>());
    }
    assert_eq!(
        w.all_gather(&particle(me))?,
        (0..n).map(particle).collect::<Vec<_>>()
    );
    let got: Particle = w.scatter(
        0,
        (me == 0).then(|| (0..n).map(|r| particle(r + 10)).collect()),
    )?;
    assert_eq!(got, particle(me + 10));
    let got = w.all_to_all((0..n).map(|j| format!("{me}->{j}")).collect())?;
    assert_eq!(
        got,
        (0..n).map(|j| format!("{j}->{me}")).collect::<Vec<_>>()
    );
    // Non-commutative reduce of strings: concatenation in rank order.
    let s = w.reduce(n / 2, me.to_string(), |a, b| a + "," + &b)?;
    let want = (0..n).map(|r| r.to_string()).collect::<Vec<_>>().join(",");
    if me == n / 2 {
        assert_eq!(s.unwrap(), want);
    }
    assert_eq!(w.all_reduce(me.to_string(), |a, b| a + "," + &b)?, want);
    // min/max with location
    let vals = [(me as i64 - 2).abs(), me as i64 % 3];
    let mins = w.all_reduce_min_loc(&vals)?;
    let maxs = w.all_reduce_max_loc(&vals)?;
    let col = |k: usize| (0..n).map(move |r| [(r as i64 - 2).abs(), r as i64 % 3][k]);
    for k in 0..2 {
        let mn = col(k).min().unwrap();
        let mx = col(k).max().unwrap();
        assert_eq!(mins[k], (mn, col(k).position(|v| v == mn).unwrap()));
        assert_eq!(maxs[k], (mx, col(k).position(|v| v == mx).unwrap()));
    }
    Ok(())
}

fn check_communicators(w: &Comm) -> R {
    let (n, me) = (w.size(), w.rank());
    // Split into evens and odds, ordered backwards.
    let sub = w
        .split(Some((me % 2) as u32), -(me as i32))?
        .expect("every rank has a color");
    let group: Vec<usize> = (0..n).filter(|r| r % 2 == me % 2).rev().collect();
    assert_eq!(sub.members(), &group[..]);
    assert_eq!(sub.rank(), group.iter().position(|&r| r == me).unwrap());
    let mut s = [0i64];
    sub.all_reduce_slice(&[me as i64], &mut s, &op::Sum)?;
    assert_eq!(s[0], group.iter().sum::<usize>() as i64);
    // Two collectives in flight on different communicators at once.
    let dup = w.dup()?;
    let a = dup.iall_reduce(vec![me as u64; 1000], op::Sum);
    let b = sub.iall_gather(vec![me as u32; 3]);
    let mut c = [0u64];
    w.all_reduce_slice(&[1u64], &mut c, &op::Sum)?;
    assert_eq!(c[0], n as u64);
    let av = a.wait()?;
    assert!(av.iter().all(|&v| v == (n * (n - 1) / 2) as u64));
    let bv = b.wait()?;
    assert_eq!(
        bv,
        group
            .iter()
            .flat_map(|&r| [r as u32; 3])
            .collect::<Vec<_>>()
    );
    // Point-to-point on the duplicate does not meet point-to-point on the world.
    if n > 1 {
        let (next, prev) = ((me + 1) % n, (me + n - 1) % n);
        let r1 = w.irecv::<String>(prev, 5)?;
        let r2 = dup.irecv::<String>(prev, 5)?;
        dup.send(next, 5, &"dup".to_string())?;
        w.send(next, 5, &"world".to_string())?;
        assert_eq!(r1.wait()?.0, "world");
        assert_eq!(r2.wait()?.0, "dup");
    }
    // Collectives interleaved with point-to-point on the same communicator.
    if n > 1 {
        let pending = w.isend((me + 1) % n, 9, &me)?;
        w.barrier()?;
        let mut b = if me == 0 {
            vec![7u8; 10]
        } else {
            vec![0u8; 10]
        };
        w.broadcast_slice(0, &mut b)?;
        let (v, _) = w.recv::<usize>((me + n - 1) % n, 9)?;
        assert_eq!(v, (me + n - 1) % n);
        pending.wait()?;
        assert_eq!(b, vec![7u8; 10]);
    }
    // Subgroup of the first half; others get None.
    let half: Vec<usize> = (0..n.div_ceil(2)).collect();
    let sg = w.subgroup(&half)?;
    assert_eq!(sg.is_some(), me < n.div_ceil(2));
    if let Some(sg) = sg {
        sg.barrier()?;
        assert_eq!(sg.size(), half.len());
    }
    // By host: the launcher's placement (RANKS_HOSTS in a job spanning hosts) or one host.
    let host = w.split_by_host()?;
    let expect = match std::env::var("RANKS_HOSTS") {
        Ok(h) => {
            let hosts: Vec<&str> = h.split(',').collect();
            hosts.iter().filter(|x| **x == hosts[me]).count()
        }
        Err(_) => n,
    };
    assert_eq!(host.size(), expect);
    w.ibarrier().wait()?;
    Ok(())
}

fn main() {
    let w = ranks::init().expect("init");
    let big = std::env::args().nth(1).is_none_or(|a| a != "small");
    let r = (|| -> R {
        for len in [0usize, 1, 7, 1000] {
            check_ops_i64(&w, len)?;
            check_noncommutative(&w, len)?;
            check_data_movement(&w, len)?;
        }
        if big {
            // 1 << 20 elements: the large-message algorithms.
            let len = 1 << 20;
            let mine = contrib(w.rank(), len);
            let mut got = vec![0i64; len];
            w.all_reduce_slice(&mine, &mut got, &op::Sum)?;
            assert!(
                got == fold(w.size() - 1, len, x, &op::Sum),
                "large all_reduce"
            );
            check_noncommutative(&w, len)?;
            let mut buf = if w.rank() == 1 % w.size() {
                contrib(5, len)
            } else {
                vec![0; len]
            };
            w.broadcast_slice(1 % w.size(), &mut buf)?;
            assert!(buf == contrib(5, len), "large broadcast");
            let mut all = vec![0i64; len];
            let k = len / w.size();
            w.all_gather_slice(&contrib(w.rank(), k), &mut all[..k * w.size()])?;
            assert!(
                all[..k * w.size()]
                    == (0..w.size())
                        .flat_map(|r| contrib(r, k))
                        .collect::<Vec<_>>()[..]
            );
        }
        check_serde(&w)?;
        check_communicators(&w)?;
        Ok(())
    })();
    if let Err(e) = r {
        eprintln!("rank {}: {e}", w.rank());
        std::process::exit(1);
    }
    w.barrier().expect("final barrier");
    if w.rank() == 0 {
        println!("collectives ok on {} ranks", w.size());
    }
}
