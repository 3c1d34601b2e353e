//! Lesson program 12, "Value('i', 10) and Value('d', 3.14) changed in a child" (lesson 5,
//! mp.Value() Example): the child adds 1 to the integer and doubles the float; the parent
//! prints both.
//!
//! The parent is rank 0 and hosts both values; the child is rank 1 (rank 0 itself when
//! alone); other ranks only wait. Expected output:
//!
//! ```text
//! Shared integer: 11
//! Shared float: 6.28
//! ```
use ranks::SharedValue;

/// The lesson's Value('d', 3.14) (a literal, not meant as π).
#[allow(clippy::approx_constant)]
const FLOAT_INIT: f64 = 3.14;

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let shared_int = SharedValue::<i32>::new(&world, 0, 10)?;
    let shared_float = SharedValue::<f64>::new(&world, 0, FLOAT_INIT)?;
    let child = if n > 1 { 1 } else { 0 };
    if me == child {
        shared_int.with_lock(|v| *v += 1)?;
        shared_float.with_lock(|v| *v *= 2.0)?;
    }
    // The parent's join().
    world.barrier()?;
    if me == 0 {
        println!("Shared integer: {}", shared_int.get()?);
        println!("Shared float: {}", shared_float.get()?);
    }
    world.barrier()
}
