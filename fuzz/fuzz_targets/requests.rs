//! Arbitrary bytes as each unary request of the Chat service, and the
//! checks each handler runs on it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::requests(data));
