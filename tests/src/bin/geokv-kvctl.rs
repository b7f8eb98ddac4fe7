//! The `kvctl` binary, built within the test package so that tests run the
//! real command against real node processes.

fn main() -> std::process::ExitCode {
    kvctl::main()
}
