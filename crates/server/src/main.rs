//! `cordon`: the Cordon control plane server.

#![forbid(unsafe_code)]

/// glibc's allocator spends a measured tenth of the server's CPU on the many small, short-lived
/// allocations of the gRPC path, and more when one thread frees what another allocated (the audit
/// writer frees every record the request tasks built).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    server::run_cli()
}
