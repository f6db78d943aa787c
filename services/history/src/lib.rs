//! The history service: the only writer of conversations and messages. It
//! sequences ingress records (dedupe, membership checks, seq allocation) in
//! one transaction per batch and serves history reads.

pub mod distributed;
pub mod grpc;
pub mod health;
pub mod ingest;
pub mod page_token;
pub mod queries;
pub mod store;
pub mod sync;

pub use queries::LocalHistory;
pub use store::postgres::PostgresStore;
pub use store::{sqlite::SqliteStore, Store, StoreError};
