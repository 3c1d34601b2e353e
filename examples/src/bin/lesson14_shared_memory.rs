//! Lesson program 14, "shared memory block changed in place by a child" (lesson 5, Shared
//! Memory Example): the parent puts the int32 array [1, 2, 3, 4, 5] in a shared memory
//! block; the child attaches to it by name and adds 1 to every element; the parent sees
//! the change.
//!
//! The parent is rank 0 and creates the block; the child is rank 1 (rank 0 itself when
//! alone); other ranks only wait. Expected output:
//!
//! ```text
//! Worker: [2, 3, 4, 5, 6]
//! Main process: [2, 3, 4, 5, 6]
//! ```
use std::time::Duration;

use ranks::SharedMemory;

const NAME: &str = "lesson14-array";

fn read_i32s(block: &SharedMemory, count: usize) -> ranks::Result<Vec<i32>> {
    let mut bytes = vec![0u8; count * 4];
    block.read(0, &mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn write_i32s(block: &SharedMemory, values: &[i32]) -> ranks::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    block.write(0, &bytes)
}

fn main() -> Result<(), ranks::Error> {
    let world = ranks::init()?;
    let (me, n) = (world.rank(), world.size());
    let a = [1i32, 2, 3, 4, 5];
    let child = if n > 1 { 1 } else { 0 };
    // The creator keeps the block until the end; dropping it removes it (unlink).
    let created = if me == 0 {
        let shm = SharedMemory::create(NAME, a.len() * 4)?;
        write_i32s(&shm, &a)?;
        Some(shm)
    } else {
        None
    };
    world.barrier()?;
    if me == child {
        let shm = SharedMemory::attach(NAME, Duration::from_secs(10))?;
        let mut values = read_i32s(&shm, a.len())?;
        for v in values.iter_mut() {
            *v += 1;
        }
        write_i32s(&shm, &values)?;
        println!("Worker: {:?}", read_i32s(&shm, a.len())?);
    }
    world.barrier()?;
    if let Some(shm) = &created {
        println!("Main process: {:?}", read_i32s(shm, a.len())?);
    }
    world.barrier()?;
    drop(created);
    Ok(())
}
