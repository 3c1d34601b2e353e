//! Every rank says who it is.
fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    println!(
        "hello from rank {} of {} (pid {})",
        world.rank(),
        world.size(),
        std::process::id()
    );
    Ok(())
}
