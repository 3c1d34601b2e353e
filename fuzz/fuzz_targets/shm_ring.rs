//! A shared-memory ring's reader over any bytes a writer could leave in the ring (a corrupt
//! or hostile peer), from any starting line, in pieces of any size: it reads chunks whose
//! headers name their own position, reports anything else as corruption, agrees with its
//! own peeks and counts, and stops; it never panics or loops without end.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let start_line = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let piece = usize::from(u16::from_le_bytes([data[2], data[3]]) % 4096) + 1;
    ranks::transport::shm::fuzz_ring_reader(&data[4..], start_line, piece);
});
