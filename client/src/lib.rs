pub mod config;
pub mod engine;
pub mod fleet;
pub mod terminal;
