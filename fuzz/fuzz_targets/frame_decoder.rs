//! Fuzzes the serial frame decoder with arbitrary bytes, delivered in arbitrary chunks.
//! It must never panic, and every frame it accepts must survive a re-encode round trip.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run frame_decoder -- -max_total_time=600
#![no_main]

use libfuzzer_sys::fuzz_target;
use votegate::sources::serial::frame::{decode, encode, Decoder};

fuzz_target!(|data: &[u8]| {
    // The first byte decides how the rest is split into reads, as a serial port would.
    let Some((&chunk, bytes)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = Decoder::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk) {
        decoder.feed(piece, &mut frames);
    }
    let mut whole = Vec::new();
    Decoder::new().feed(bytes, &mut whole);
    assert_eq!(frames, whole, "chunking changed the result");
    for frame in frames.into_iter().flatten() {
        let wire = encode(&frame);
        assert_eq!(wire.last(), Some(&0));
        assert_eq!(decode(&wire[..wire.len() - 1]), Ok(frame));
    }
});
