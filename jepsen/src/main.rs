//! `geokv-jepsen`: see the library's docs, or `geokv-jepsen --help`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `geokv-jepsen node <geokv flags>` runs one geokv node: `run` starts its
    // lab's node processes from this same binary.
    if args.get(1).is_some_and(|a| a == "node") {
        let node_args = std::iter::once("geokv".into()).chain(args.into_iter().skip(2));
        if let Err(err) = geokv_server::cli::main_from(node_args) {
            eprintln!("geokv node: {err:#}");
            std::process::exit(1);
        }
        return;
    }
    let code = geokv_jepsen::cli::run(args, &mut std::io::stdout(), &mut std::io::stderr());
    std::process::exit(code);
}
