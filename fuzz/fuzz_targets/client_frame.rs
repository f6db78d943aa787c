//! Arbitrary bytes as a `confab.v1.ClientFrame` on a `Connect` stream, and
//! every check the gateway (and history, for `resume`) runs on it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::client_frame(data));
