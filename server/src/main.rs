//! The `geokv` binary; see `geokv --help`.

fn main() -> anyhow::Result<()> {
    geokv_server::cli::main()
}
