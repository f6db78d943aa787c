//! The `confab` command's library side: `dev`, the whole product in one
//! process (embedded mode), usable from tests on port 0.

pub mod dev;
