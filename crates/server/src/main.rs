//! `cordon`: the Cordon control plane server.

#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    server::run_cli()
}
