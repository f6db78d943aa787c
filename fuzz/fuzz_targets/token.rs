//! Bearer tokens: raw strings, authorization metadata, and tokens signed by
//! a trusted key with arbitrary headers and claims.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::token::check(data));
