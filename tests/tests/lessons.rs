//! The lesson workloads (rows 2..24 of the lessons' WORKLOADS.md; row 1 is the primes test in
//! launcher.rs), each run as a real job through the launcher, checked against the results
//! the lessons give.

use std::collections::BTreeSet;

use ranks_tests::*;

/// Run `program` on `n` ranks with `args`; it must exit 0 and leave nothing behind.
fn run_ok(n: usize, program: &str, args: &[&str]) -> Outcome {
    let np = n.to_string();
    let o = run_job(&["-n", &np], program, args, LIMIT);
    assert_eq!(o.code, 0, "{program} {args:?} on {n} ranks failed: {o:?}");
    assert_clean(&o);
    o
}

/// The output has exactly one line equal to `line`.
fn has_line(o: &Outcome, line: &str) {
    let found = o.stdout.lines().filter(|l| *l == line).count();
    assert_eq!(
        found, 1,
        "expected the line {line:?} once in:\n{}",
        o.stdout
    );
}

/// Number of output lines that start with `prefix`.
fn count_prefix(o: &Outcome, prefix: &str) -> usize {
    o.stdout.lines().filter(|l| l.starts_with(prefix)).count()
}

/// Lines that start with `prefix`, in output order.
fn lines_from<'a>(o: &'a Outcome, prefix: &str) -> Vec<&'a str> {
    o.stdout.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// `1 + 2 + ... + x`.
fn triangle(x: u64) -> u64 {
    x * (x + 1) / 2
}

fn list_of(values: impl IntoIterator<Item = u64>) -> String {
    let v: Vec<String> = values.into_iter().map(|x| x.to_string()).collect();
    format!("[{}]", v.join(", "))
}

#[test]
fn lesson02_process_list() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson02_process_list", &[]);
        let mut pids = BTreeSet::new();
        for r in 0..n {
            let start = lines_from(&o, &format!("worker {r} (pid "));
            assert_eq!(start.len(), 2, "{}", o.stdout);
            assert!(start.iter().any(|l| l.contains(") starting, name: ")));
            assert!(start.iter().any(|l| l.contains(") finishing, name: ")));
            let pid = start[0]
                .split("(pid ")
                .nth(1)
                .and_then(|s| s.split(')').next())
                .unwrap()
                .to_string();
            assert!(start.iter().all(|l| l.contains(&format!("(pid {pid})"))));
            pids.insert(pid);
        }
        assert_eq!(pids.len(), n, "pids must differ: {pids:?}");
        assert_eq!(o.lines_with(") starting, name: ").len(), n);
        assert_eq!(o.lines_with(") finishing, name: ").len(), n);
        has_line(&o, &format!("result: {n} workers, {n} distinct pids"));
    }
}

#[test]
fn lesson03_shared_list() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson03_shared_list", &[]);
        has_line(&o, "plain copies: main sees [0, 0, 0], sum 0");
        has_line(&o, "manager list: [10, 10, 10], sum 30");
        has_line(&o, "result: plain copies 0, manager list 30");
    }
    let o = run_ok(4, "lesson03_shared_list", &["unlocked"]);
    assert_eq!(count_prefix(&o, "result (unlocked): "), 1, "{}", o.stdout);
}

#[test]
fn lesson04_queue() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson04_queue", &[]);
        has_line(&o, "result: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]");
        let read: Vec<String> = lines_from(&o, "reader (rank ")
            .iter()
            .map(|l| l.rsplit(": ").next().unwrap().to_string())
            .collect();
        let want: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        assert_eq!(read, want, "{}", o.stdout);
    }
}

#[test]
fn lesson05_queue_workers() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson05_queue_workers", &[]);
        let w = n - 1;
        has_line(
            &o,
            &format!(
                "result: items [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] each processed exactly once; \
                 {w} of {w} workers exited"
            ),
        );
        let mut items: Vec<u32> = o
            .lines_with(": Processing ")
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        items.sort_unstable();
        assert_eq!(items, (0..10).collect::<Vec<_>>(), "{}", o.stdout);
        assert_eq!(o.lines_with(": Exiting").len(), w, "{}", o.stdout);
    }
}

#[test]
fn lesson06_queue_results() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson06_queue_results", &[]);
        assert_eq!(count_prefix(&o, "Result: worker "), 10, "{}", o.stdout);
        has_line(
            &o,
            "result: 10 results, from workers [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        );
    }
}

#[test]
fn lesson07_pipe_messages() {
    let want = [
        "hello",
        "are you there?",
        "hey",
        "LOL",
        "K",
        "THX",
        "Bye!",
        "END",
    ];
    for n in [2, 4] {
        let o = run_ok(n, "lesson07_pipe_messages", &[]);
        let got: Vec<&str> = lines_from(&o, "Message Received: ")
            .iter()
            .map(|l| &l["Message Received: ".len()..])
            .collect();
        assert_eq!(got, want, "{}", o.stdout);
        has_line(&o, "result: 8 messages received in order, stopped at END");
        has_line(&o, "done");
    }
}

#[test]
fn lesson08_pipe_typed() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson08_pipe_typed", &[]);
        let got = lines_from(&o, "Child: Received ");
        assert_eq!(
            got,
            [
                "Child: Received 'one' from parent",
                "Child: Received '1' from parent",
                "Child: Received 'two' from parent",
                "Child: Received '2' from parent",
            ],
            "{}",
            o.stdout
        );
        has_line(&o, "Child Exiting");
        has_line(
            &o,
            "result: child received ['one', 1, 'two', 2] in order and exited on None",
        );
        has_line(&o, "Both Parent and Child Exited");
    }
}

#[test]
fn lesson09_manager_namespace() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson09_manager_namespace", &[]);
        has_line(&o, "count: 0");
        has_line(
            &o,
            "result: count 0, log of 20 entries (10 Entered, 10 Left)",
        );
    }
}

#[test]
fn lesson10_manager_list_dict() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson10_manager_list_dict", &[]);
        let w = n - 1;
        has_line(
            &o,
            &format!("result: list of {w} names, dict of {w} entries"),
        );
        let list = lines_from(&o, "Shared list: ");
        assert_eq!(list.len(), 1, "{}", o.stdout);
        for r in 1..n {
            assert!(list[0].contains(&format!("'Process-{r}'")), "{}", o.stdout);
        }
        assert_eq!(count_prefix(&o, "Shared dict: {"), 1, "{}", o.stdout);
    }
}

#[test]
fn lesson11_shared_value_array() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson11_shared_value_array", &[]);
        has_line(&o, "Final shared_int: 15");
        has_line(&o, "Final shared_float_array: [4.0, 5.5, 6.0]");
        has_line(&o, "result: 15 [4.0, 5.5, 6.0]");
    }
    for n in [4, 8] {
        let o = run_ok(n, "lesson11_shared_value_array", &["unlocked"]);
        assert_eq!(count_prefix(&o, "result (unlocked): "), 1, "{}", o.stdout);
    }
}

#[test]
fn lesson12_value_child() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson12_value_child", &[]);
        has_line(&o, "Shared integer: 11");
        has_line(&o, "Shared float: 6.28");
    }
}

#[test]
fn lesson13_value_array_child() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson13_value_array_child", &[]);
        has_line(&o, "3.1415927");
        has_line(&o, "[0, -1, -2, -3, -4, -5, -6, -7, -8, -9]");
    }
}

#[test]
fn lesson14_shared_memory() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson14_shared_memory", &[]);
        has_line(&o, "Worker: [2, 3, 4, 5, 6]");
        has_line(&o, "Main process: [2, 3, 4, 5, 6]");
    }
}

#[test]
fn lesson15_square_list() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson15_square_list", &[]);
        has_line(&o, "Result(in process p1): [1, 4, 9, 16]");
        has_line(&o, "Sum of squares(in process p1): 30");
        has_line(&o, "Result(in main program, plain list): []");
        has_line(&o, "Result(in main program): [1, 4, 9, 16]");
        has_line(&o, "Sum of squares(in main program): 30");
    }
}

#[test]
fn lesson16_manager_records() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson16_manager_records", &[]);
        has_line(&o, "New record added!");
        let names: Vec<&str> = lines_from(&o, "Name: ");
        assert_eq!(
            names,
            ["Name: Sam", "Name: Adam", "Name: Kevin", "Name: Jeff"],
            "{}",
            o.stdout
        );
        let scores: Vec<&str> = lines_from(&o, "Score: ");
        assert_eq!(
            scores,
            ["Score: 10", "Score: 9", "Score: 9", "Score: 8"],
            "{}",
            o.stdout
        );
        has_line(&o, "result: 4 records, last ('Jeff', 8)");
    }
}

#[test]
fn lesson17_bank() {
    // Withdraw on rank 1 and deposit on rank 2 at the same time.
    let o = run_ok(3, "lesson17_bank", &[]);
    assert_eq!(
        lines_from(&o, "Final balance = "),
        ["Final balance = 100"; 10],
        "{}",
        o.stdout
    );
    has_line(&o, "result: 100 every time");
    for n in [3, 4] {
        let o = run_ok(n, "lesson17_bank", &["unlocked"]);
        assert_eq!(count_prefix(&o, "Final balance = "), 10, "{}", o.stdout);
        assert_eq!(count_prefix(&o, "result (unlocked): "), 1, "{}", o.stdout);
    }
}

#[test]
fn lesson18_counter() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson18_counter", &[]);
        has_line(&o, "Final value (lock): 100");
        has_line(&o, "Final value (atomic): 100");
        has_line(&o, "result: 100 with the lock, 100 with atomic add");
    }
    for n in [4, 8] {
        let o = run_ok(n, "lesson18_counter", &["unlocked"]);
        assert_eq!(count_prefix(&o, "result (unlocked): "), 1, "{}", o.stdout);
    }
}

#[test]
fn lesson19_shared_memory_swap() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson19_shared_memory_swap", &[]);
        has_line(&o, "result: a permutation of 0..19");
        let block = lines_from(&o, "block: [");
        assert_eq!(block.len(), 1, "{}", o.stdout);
        let mut bytes: Vec<u8> = block[0]["block: [".len()..block[0].len() - 1]
            .split(", ")
            .map(|b| b.parse().unwrap())
            .collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..20).collect::<Vec<u8>>());
    }
}

#[test]
fn lesson20_pool_square() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson20_pool_square", &[]);
        has_line(&o, "result: [1, 4, 9, 16, 25]");
        assert_eq!(
            count_prefix(&o, "Worker process id for "),
            5,
            "{}",
            o.stdout
        );
    }
}

#[test]
fn lesson21_pool_balance() {
    // 5 ranks: main and pools of 2 and of 4 workers, as in the lesson.
    let o = run_ok(5, "lesson21_pool_balance", &[]);
    let results = lines_from(&o, "result: ");
    assert_eq!(results.len(), 3, "{}", o.stdout);
    for (line, what, k, items) in [
        (results[0], "names", 2, 5),
        (results[1], "pairs", 2, 7),
        (results[2], "pairs", 4, 7),
    ] {
        let head =
            format!("result: {what} with {k} workers: {items} items, each processed once, by ");
        assert!(line.starts_with(&head), "{line:?}\n{}", o.stdout);
        // The load is spread: more than one worker took items.
        let used: usize = line[head.len()..]
            .trim_end_matches(" workers")
            .parse()
            .unwrap();
        assert!((2..=k).contains(&used), "{line:?}");
    }
    assert_eq!(count_prefix(&o, "PID = "), 14, "{}", o.stdout);
    // With 3 ranks the pool of 4 shrinks to 2 workers.
    let o = run_ok(3, "lesson21_pool_balance", &[]);
    assert_eq!(
        o.lines_with("with 2 workers: ")
            .iter()
            .filter(|l| l.starts_with("result: ") && l.contains("each processed once"))
            .count(),
        3,
        "{}",
        o.stdout
    );
}

#[test]
fn lesson22_pool_sum_map() {
    // The lesson's Pool(4): main and 4 workers.
    let o = run_ok(5, "lesson22_pool_sum_map", &[]);
    let want = list_of((100_000_000..100_000_100).map(triangle));
    has_line(&o, &format!("results: {want}"));
    has_line(
        &o,
        "result: 100 values, first 5000000050000000, last 5000009950004950",
    );
}

#[test]
fn lesson23_pool_apply_async() {
    for n in [2, 4, 8] {
        let o = run_ok(n, "lesson23_pool_apply_async", &[]);
        has_line(
            &o,
            "result: [50005000, 50015001, 50025003, 50035006, 50045010, 50055015, 50065021, \
             50075028, 50085036, 50095045]",
        );
    }
}

#[test]
fn lesson24_pool_callback() {
    for n in [2, 4] {
        let o = run_ok(n, "lesson24_pool_callback", &[]);
        has_line(
            &o,
            "result: 4 results delivered to the callback before join returned",
        );
        let list = lines_from(&o, "result_list: ");
        assert_eq!(list.len(), 1, "{}", o.stdout);
        for x in 100_000_000..100_000_004u64 {
            assert!(list[0].contains(&triangle(x).to_string()), "{}", o.stdout);
        }
    }
}
