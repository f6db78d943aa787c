//! The router's side of `confab.internal.v1.RouterLink`: every gateway keeps
//! one `Attach` stream open to every router, announces which users have
//! sessions on it, and receives the deliveries for those users and the
//! outcomes of the requests it accepted. `GatewayLinks` is the router's
//! `DeliverySink` in distributed mode.
//!
//! Modules: `links` (`GatewayLinks`: the attached gateways, presence, and
//! sending deliveries and completions to them), `directory` (which users are
//! on which gateway), `service` (the `RouterLink` gRPC service and its
//! streams).

mod directory;
mod links;
mod service;
#[cfg(test)]
mod tests;

pub use links::{GatewayLinks, LinkConfig, OUTCOMES_ORPHANED};
pub use service::{server, RouterLinkService};
