//! `flotilla`: the coordinator (`flotilla serve`) and its admin CLI.
//!
//! The fleet side (enrollment, policies, scheduling, catalog) is the next piece of work;
//! until then this binary only identifies itself, and hosts are backed up with the
//! standalone `flotilla-agent`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Flotilla coordinator and admin CLI",
    long_about = "Flotilla coordinator and admin CLI.\n\nThe coordinator (enrollment, policy \
                  rollout, scheduling, catalog, restores from the CLI) is not part of this \
                  release yet. Back up a host with the standalone agent:\n  flotilla-agent \
                  backup /etc file:///var/backups/$(hostname)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("flotilla: the coordinator is not available in this release; see `flotilla --help`");
    std::process::exit(2);
}
