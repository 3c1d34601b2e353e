//! Lesson program 15, "square_list into an Array and a Value" (multiprocessing in Python,
//! session 1 and session 2): a child squares [1, 2, 3, 4].
//!
//! With a plain list the child's results stay in the child (main sees []); with a shared
//! Array(4) and Value, hosted by rank 0, main sees them. The parent is rank 0, the child
//! rank 1 (rank 0 itself when alone); other ranks only wait. Expected output:
//!
//! ```text
//! Result(in process p1): [1, 4, 9, 16]
//! Sum of squares(in process p1): 30
//! Result(in main program, plain list): []
//! Result(in main program): [1, 4, 9, 16]
//! Sum of squares(in main program): 30
//! ```
use ranks::{SharedArray, SharedValue};

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let mylist = [1i32, 2, 3, 4];
    let result = SharedArray::<i32>::new(&world, 0, &[0; 4])?;
    let square_sum = SharedValue::<i32>::new(&world, 0, 0)?;
    // Session 1: a plain "global" list; each process appends to its own.
    let plain: Vec<i32> = Vec::new();
    let child = if n > 1 { 1 } else { 0 };
    if me == child {
        let mut mine = plain.clone();
        mine.extend(mylist.iter().map(|x| x * x));
        println!("Result(in process p1, plain list): {mine:?}");
        for (idx, num) in mylist.iter().enumerate() {
            result.set(idx, num * num)?;
        }
        square_sum.set(result.to_vec()?.iter().sum())?;
        println!("Result(in process p1): {:?}", result.to_vec()?);
        println!("Sum of squares(in process p1): {}", square_sum.get()?);
    }
    world.barrier()?;
    if me == 0 {
        println!("Result(in main program, plain list): {plain:?}");
        println!("Result(in main program): {:?}", result.to_vec()?);
        println!("Sum of squares(in main program): {}", square_sum.get()?);
    }
    world.barrier()
}
