//! A rank program written with `ranks::main`: rank 1 receives a string as a number, and the
//! error is printed readably, named by rank.

fn main() -> std::process::ExitCode {
    ranks::main(|world| {
        match world.rank() {
            0 => world.send(1, 9, &"not a number".to_string())?,
            1 => {
                let (v, _) = world.recv::<[u64; 4]>(0, 9)?;
                println!("got {v:?}");
            }
            _ => {}
        }
        Ok(())
    })
}
