//! Lesson program 13, "Value('d') and Array('i', range(10)) changed in a child" (lesson 5,
//! mp.Array() Example): the child sets the value to 3.1415927 and negates every element of
//! the array; the parent prints both.
//!
//! The parent is rank 0 and hosts both objects; the child is rank 1 (rank 0 itself when
//! alone); other ranks only wait. Expected output:
//!
//! ```text
//! 3.1415927
//! [0, -1, -2, -3, -4, -5, -6, -7, -8, -9]
//! ```
use ranks::{SharedArray, SharedValue};

/// The value the lesson stores (a literal, not meant as π).
#[allow(clippy::approx_constant)]
const VALUE: f64 = 3.1415927;

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let num = SharedValue::<f64>::new(&world, 0, 0.0)?;
    let init: Vec<i32> = (0..10).collect();
    let arr = SharedArray::<i32>::new(&world, 0, &init)?;
    let child = if n > 1 { 1 } else { 0 };
    if me == child {
        num.set(VALUE)?;
        for i in 0..arr.len() {
            arr.set(i, -arr.get(i)?)?;
        }
    }
    world.barrier()?;
    if me == 0 {
        println!("{}", num.get()?);
        println!("{:?}", arr.to_vec()?);
    }
    world.barrier()
}
