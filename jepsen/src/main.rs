//! `geokv-jepsen`: see the library's docs, or `geokv-jepsen --help`.

fn main() {
    let code = geokv_jepsen::cli::run(std::env::args_os().collect(), &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
