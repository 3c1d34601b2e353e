//! Lesson program 8, "parent sends mixed messages to a child over a pipe" (lesson 5, Pipe
//! Example): the parent sends "one", 1, "two", 2 and then None; the child prints what it
//! receives and exits on None.
//!
//! Python sends values of any type; here the messages are an enum (text or number) and the
//! stop value is `None`, so the pipe carries `Option<Message>`. The parent is rank 0 and the
//! child rank 1; other ranks only wait. Needs at least 2 ranks. Expected output:
//!
//! ```text
//! Child: Received 'one' from parent
//! Child: Received '1' from parent
//! Child: Received 'two' from parent
//! Child: Received '2' from parent
//! Child Exiting
//! result: child received ['one', 1, 'two', 2] in order and exited on None
//! Both Parent and Child Exited
//! ```
use std::fmt;

use ranks::Pipe;
use serde::{Deserialize, Serialize};

/// One message: a piece of text or a number.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Message {
    Text(String),
    Number(i64),
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(s) => write!(f, "{s}"),
            Message::Number(v) => write!(f, "{v}"),
        }
    }
}

/// Like Python's repr of a list element: text quoted, numbers bare.
fn repr(m: &Message) -> String {
    match m {
        Message::Text(s) => format!("'{s}'"),
        Message::Number(v) => v.to_string(),
    }
}

fn messages() -> Vec<Option<Message>> {
    vec![
        Some(Message::Text("one".into())),
        Some(Message::Number(1)),
        Some(Message::Text("two".into())),
        Some(Message::Number(2)),
        None,
    ]
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        eprintln!("lesson08_pipe_typed needs at least 2 ranks (parent and child)");
        std::process::exit(2);
    }
    let pipe: Option<Pipe<Option<Message>>> = Pipe::new(&world, 0, 1, true)?;
    if let Some(mut conn) = pipe {
        if me == 0 {
            for m in messages() {
                match &m {
                    Some(v) => println!("Parent: Sending '{v}' to child"),
                    None => println!("Parent: Sending 'None' to child"),
                }
                conn.send(&m)?;
            }
            println!("Parent Finished Sending");
            conn.close()?;
        } else {
            let mut got = Vec::new();
            while let Some(message) = conn.recv()? {
                println!("Child: Received '{message}' from parent");
                got.push(message);
            }
            println!("Child Exiting");
            conn.close()?;
            let want: Vec<Message> = messages().into_iter().flatten().collect();
            let shown: Vec<String> = got.iter().map(repr).collect();
            if got == want {
                println!(
                    "result: child received [{}] in order and exited on None",
                    shown.join(", ")
                );
            } else {
                println!("result: WRONG messages [{}]", shown.join(", "));
            }
        }
    }
    world.barrier()?;
    if me == 0 {
        println!("Both Parent and Child Exited");
    }
    Ok(())
}
