//! The `kvctl` binary: see the library's docs ([`kvctl`]).

fn main() -> std::process::ExitCode {
    kvctl::main()
}
