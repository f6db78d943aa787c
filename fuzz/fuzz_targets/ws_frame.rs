//! Arbitrary bytes as a WebSocket message on `/v1/connect`, in both frame
//! formats (`confab.v1.proto`, `confab.v1.json`): decoding never panics, a
//! frame it takes in gets every check a `Connect` frame gets, and a server
//! frame written as JSON reads back as the same frame.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::ws_frame(data));
