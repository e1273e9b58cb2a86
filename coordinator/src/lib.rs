//! The coordinator's core: the catalog now; scheduler, policy rollout, credential
//! vending and the gRPC services follow. The `flotilla` binary is a thin CLI over it.

pub mod catalog;
pub mod pki;
pub mod server;
