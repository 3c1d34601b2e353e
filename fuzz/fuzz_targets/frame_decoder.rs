//! The frame decoder on any byte stream, read in chunks of any size: it yields frames whose
//! payload has the length their header says, reports oversize ones, or fails; it never
//! panics or allocates more than the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ranks::wire::{Decoded, FrameDecoder};

const LIMIT: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&first, mut input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first % 64) + 1;
    let mut dec = FrameDecoder::new(3, LIMIT);
    loop {
        let r = dec.pump(|buf| {
            let n = buf.len().min(chunk).min(input.len());
            buf[..n].copy_from_slice(&input[..n]);
            input = &input[n..];
            Ok(n)
        });
        match r {
            Ok(Some(Decoded::Frame(h, payload))) => assert_eq!(payload.len() as u64, h.len),
            Ok(Some(Decoded::TooLarge(h))) => assert!(h.len > LIMIT),
            Ok(None) | Err(_) => break,
        }
    }
});
