//! The `geokv` node binary, built within the test package so the harness can
//! spawn real node processes (see `geokv_tests::TestCluster`).

fn main() -> anyhow::Result<()> {
    geokv_server::cli::main()
}
