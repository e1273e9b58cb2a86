pub mod engine;
pub mod fleet;
