//! Raw bytes as a call's body, through a server's framing, decompression
//! and request decoding, unary and stream (see `confab_fuzz::wire`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::wire::wire(data));
