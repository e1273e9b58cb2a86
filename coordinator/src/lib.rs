//! The coordinator's core: catalog, PKI, configuration, the fleet (policies, schedules,
//! jobs, credential vending) and the gRPC services. The `flotilla` binary is a thin CLI
//! over it.

pub mod catalog;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod pki;
pub mod report;
pub mod report_html;
pub mod server;
