//! `cargo xtask`: geokv's set-up and task runner.
//!
//! A fresh Debian or Ubuntu machine with only Rust cannot build geokv on its
//! own: `librocksdb-sys`'s build script runs bindgen, which loads libclang,
//! and compiles RocksDB's C++ with a C++ compiler; the benchmark tests start
//! etcd 3.4 beside geokv; the harness's clock-skew run needs libfaketime;
//! the tests check the metrics and alert rules with promtool; the test
//! runner is cargo-nextest. This program
//! checks for each of them, installs what is missing (apt-get as root or
//! through `sudo -n`, `cargo install` for nextest) and prints the exact
//! command when it cannot, then builds and runs the task:
//!
//! ```text
//! cargo xtask lab [ARGS]     geokv-lab ARGS (default: up), a local 3-region cluster
//! cargo xtask test [ARGS]    cargo nextest run --workspace ARGS
//! cargo xtask bench [ARGS]   the release geokv-bench ARGS (default: --scenario local --quick)
//! cargo xtask setup          install everything the three need, run nothing
//! cargo xtask doctor         say what is present and what is missing, change nothing
//! ```
//!
//! The `xtask` alias lives in `.cargo/config.toml`. This crate has no
//! dependencies, so it compiles in seconds, before anything needs libclang.
//!
//! The first build compiles RocksDB's C++ ([`COLD_BUILD_NOTE`]). The lab and
//! the tests share the dev profile, so it is compiled once for both; the
//! benchmarks need a release build, and `bench` links the RocksDB archive the
//! dev build already made (`ROCKSDB_LIB_DIR`, same sources, same `-O2`)
//! instead of compiling it a second time.
//!
//! What it deliberately does not do: install Rust, touch anything outside the
//! package manager and `cargo install`, or support package managers other
//! than apt (elsewhere it names what to install and stops).

use std::env;
use std::ffi::OsString;
use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// What a user is told before a build that has to compile RocksDB: how long
/// it took, measured on the reference machine (2 cores, cold target dir).
const COLD_BUILD_NOTE: &str = "the first build compiles RocksDB's C++: about 15 minutes on 2 cores \
     (the lab's and the tests' builds share it; later builds take seconds to a minute)";

/// While a long build runs without a terminal (CI, a pipe), how often a
/// line says it is still going: cargo prints no progress bar there, and
/// RocksDB's build script prints nothing for half an hour.
const QUIET_BUILD_TICK: Duration = Duration::from_secs(120);

/// The etcd the benchmark (and its smoke test) starts by default.
const ETCD_BIN: &str = "/usr/bin/etcd";

/// Where Debian's `faketime` package puts libfaketime (as geokv-lab looks for it).
const FAKETIME_LIBRARIES: [&str; 2] =
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"];

/// The benchmark run when `cargo xtask bench` is given no arguments.
const DEFAULT_BENCH_ARGS: &[&str] = &["--scenario", "local", "--quick"];

const USAGE: &str = "\
cargo xtask: set up this machine for geokv, then build and run

USAGE:
    cargo xtask lab [ARGS]     start geokv-lab ARGS (default: up): 3 regions behind an emulated WAN
    cargo xtask test [ARGS]    run the tests: cargo nextest run --workspace ARGS
    cargo xtask bench [ARGS]   run the release benchmark geokv-bench ARGS
                               (default: --scenario local --quick; needs etcd, installed here)
    cargo xtask setup          install everything lab, test and bench need; run nothing
    cargo xtask doctor         report what is present and missing; change nothing

Each task first checks for what it needs and installs what is missing:
    libclang + headers   apt package libclang-dev   (librocksdb-sys runs bindgen)
    a C++ compiler       apt package g++            (RocksDB is compiled from source)
    etcd 3.4             apt package etcd-server    (test, bench: the side-by-side benchmark)
    libfaketime          apt package faketime       (test: the harness's clock-skew run)
    promtool             apt package prometheus     (test: checks /metrics and the alert rules)
    Python gRPC client   python3 -m venv ~/.cache/geokv-python, pip install grpcio ... (test)
    cargo-nextest        cargo install cargo-nextest --locked   (test)
apt-get runs directly as root, else through `sudo -n`; when neither works the
exact command is printed and nothing else happens. Supported: Debian and
Ubuntu with Rust installed (rustup). Elsewhere, install the same by hand.";

fn main() -> ExitCode {
    let mut args = env::args_os().skip(1);
    let task = args.next().and_then(|a| a.into_string().ok()).unwrap_or_default();
    let rest: Vec<OsString> = args.collect();
    let result = match task.as_str() {
        "lab" => lab(rest),
        "test" => test(rest),
        "bench" => bench(rest),
        "setup" => ensure(&[Need::Build, Need::Etcd, Need::Faketime, Need::Promtool, Need::PythonGrpc, Need::Nextest]),
        "doctor" => doctor(),
        "" | "help" | "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask lab`: build geokv-lab, then become it.
fn lab(mut args: Vec<OsString>) -> Result<(), String> {
    ensure(&[Need::Build])?;
    if args.is_empty() {
        args.push("up".into());
    }
    build(&["build", "--bin", "geokv-lab"], "the lab")?;
    exec(cargo().args(["run", "--quiet", "--bin", "geokv-lab", "--"]).args(args))
}

/// `cargo xtask test`: build every test binary (timed), then become nextest.
fn test(args: Vec<OsString>) -> Result<(), String> {
    ensure(&[Need::Build, Need::Etcd, Need::Faketime, Need::Promtool, Need::PythonGrpc, Need::Nextest])?;
    // nextest builds exactly what `cargo test --no-run` builds; doing it here
    // first lets the build be timed and watched on its own.
    build(&["test", "--workspace", "--no-run"], "the tests")?;
    exec(cargo().args(["nextest", "run", "--workspace"]).args(args))
}

/// `cargo xtask bench`: a release geokv-bench that links the dev build's
/// RocksDB archive, then become it.
fn bench(mut args: Vec<OsString>) -> Result<(), String> {
    ensure(&[Need::Build, Need::Etcd])?;
    if args.is_empty() {
        args.extend(DEFAULT_BENCH_ARGS.iter().map(OsString::from));
    }
    let target = target_dir()?;
    if rocksdb_archive(&target, "debug").is_none() {
        build(&["build", "--package", "geokv-server", "--lib"], "RocksDB (dev profile)")?;
    }
    let archive = rocksdb_archive(&target, "debug")
        .ok_or("the dev build made no librocksdb.a under debug/build/librocksdb-sys-*/out")?;
    let dir = archive.parent().expect("an archive path has a parent").to_path_buf();
    println!("xtask: linking the release build against {}", archive.display());
    let mut command = cargo();
    command
        .args(["build", "--release", "--package", "geokv-bench", "--bin", "geokv-bench"])
        .env("ROCKSDB_LIB_DIR", &dir)
        .env("ROCKSDB_STATIC", "1");
    run_timed(command, "the release benchmark")?;
    exec(Command::new(target.join("release").join("geokv-bench")).args(args))
}

/// `cargo xtask doctor`: one line per prerequisite.
fn doctor() -> Result<(), String> {
    let mut missing = 0;
    for need in [Need::Build, Need::Etcd, Need::Faketime, Need::Promtool, Need::PythonGrpc, Need::Nextest] {
        for item in need.items() {
            let found = item.present();
            missing += usize::from(!found);
            println!("{:8} {:28} {}", if found { "ok" } else { "MISSING" }, item.name, item.why);
        }
    }
    match target_dir() {
        Ok(target) => match rocksdb_archive(&target, "debug") {
            Some(archive) => println!("ok       RocksDB built                {}", archive.display()),
            None => println!("-        RocksDB not built yet        {COLD_BUILD_NOTE}"),
        },
        Err(e) => println!("?        target dir                   {e}"),
    }
    if missing == 0 { Ok(()) } else { Err(format!("{missing} missing; `cargo xtask setup` installs them")) }
}

/// What a task needs, in groups.
#[derive(Clone, Copy, PartialEq)]
enum Need {
    /// libclang and a C++ compiler: anything that builds geokv-server.
    Build,
    /// etcd 3.4: the benchmark and its smoke test.
    Etcd,
    /// cargo-nextest: the test runner.
    Nextest,
    /// libfaketime: the harness's clock-skew runs.
    Faketime,
    /// promtool: the tests check the metrics and the alert rules with it.
    Promtool,
    /// A Python with grpcio: the tests' outside gRPC client.
    PythonGrpc,
}

/// One prerequisite: how to tell it is there, and how to get it.
struct Item {
    name: &'static str,
    why: &'static str,
    present: fn() -> bool,
    install: Install,
}

enum Install {
    /// Debian/Ubuntu packages.
    Apt(&'static [&'static str]),
    /// `cargo install` arguments.
    Cargo(&'static [&'static str]),
    /// A Python virtual environment with [`PYTHON_PACKAGES`] (pip, PyPI).
    Python,
}

/// What the tests' Python client needs, from PyPI.
const PYTHON_PACKAGES: [&str; 5] =
    ["grpcio", "grpcio-tools", "grpcio-health-checking", "grpcio-reflection", "grpcio-status"];
const PYTHON_IMPORTS: &str =
    "import grpc, grpc_tools.protoc, grpc_health.v1, grpc_reflection.v1alpha, google.rpc.error_details_pb2";

/// The tests' Python environment: `$HOME/.cache/geokv-python` (the tests
/// look there, or at `GEOKV_PYTHON`).
fn python_env() -> PathBuf {
    PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cache/geokv-python")
}

/// Makes [`python_env`] with [`PYTHON_PACKAGES`]: `python3 -m venv`
/// (Debian's python3-venv first when venv is missing), then pip.
fn python_install() -> Result<(), String> {
    let dir = python_env();
    if !succeeds(Command::new("python3").args(["-m", "venv", "--help"])) {
        println!("xtask: python3 venv is missing; installing python3-venv with apt-get");
        apt_install(&["python3", "python3-venv"])?;
    }
    let venv = Command::new("python3").args(["-m", "venv"]).arg(&dir).status();
    if !venv.is_ok_and(|s| s.success()) {
        return Err(format!("python3 -m venv {} failed", dir.display()));
    }
    let mut pip = Command::new(dir.join("bin/pip"));
    pip.args(["install", "--quiet"]).args(PYTHON_PACKAGES);
    run_timed(pip, "the tests' Python gRPC client")
}

impl Need {
    fn items(self) -> Vec<Item> {
        match self {
            Need::Build => vec![
                Item {
                    name: "libclang + clang headers",
                    why: "librocksdb-sys runs bindgen",
                    present: libclang_present,
                    install: Install::Apt(&["libclang-dev"]),
                },
                Item {
                    name: "C++ compiler",
                    why: "RocksDB is compiled from source",
                    present: cxx_present,
                    install: Install::Apt(&["g++"]),
                },
            ],
            Need::Etcd => vec![Item {
                name: "etcd 3.4 (/usr/bin/etcd)",
                why: "the benchmark runs etcd beside geokv",
                present: || Path::new(ETCD_BIN).is_file(),
                install: Install::Apt(&["etcd-server"]),
            }],
            Need::Faketime => vec![Item {
                name: "libfaketime",
                why: "the harness shifts node clocks with it",
                present: || FAKETIME_LIBRARIES.iter().any(|p| Path::new(p).exists()),
                install: Install::Apt(&["faketime"]),
            }],
            Need::Promtool => vec![Item {
                name: "promtool",
                why: "the tests check /metrics and docs/monitoring/alerts.yml with it",
                present: || succeeds(Command::new("promtool").arg("--version")),
                install: Install::Apt(&["prometheus"]),
            }],
            Need::PythonGrpc => vec![Item {
                name: "Python grpcio client (~/.cache/geokv-python)",
                why: "the tests call every node with a gRPC client not written here",
                present: || succeeds(Command::new(python_env().join("bin/python")).args(["-c", PYTHON_IMPORTS])),
                install: Install::Python,
            }],
            Need::Nextest => vec![Item {
                name: "cargo-nextest",
                why: "the test runner (process groups, timeouts)",
                present: || succeeds(cargo().args(["nextest", "--version"])),
                install: Install::Cargo(&["cargo-nextest", "--locked"]),
            }],
        }
    }
}

impl Item {
    fn present(&self) -> bool {
        (self.present)()
    }
}

/// Installs whatever of `needs` is missing; an error names the command the
/// user has to run when this process cannot.
fn ensure(needs: &[Need]) -> Result<(), String> {
    let missing: Vec<Item> = needs.iter().flat_map(|n| n.items()).filter(|i| !i.present()).collect();
    let packages: Vec<&str> = missing
        .iter()
        .filter_map(|i| match i.install {
            Install::Apt(p) => Some(p),
            Install::Cargo(_) | Install::Python => None,
        })
        .flatten()
        .copied()
        .collect();
    if !packages.is_empty() {
        let names: Vec<&str> =
            missing.iter().filter(|i| matches!(i.install, Install::Apt(_))).map(|i| i.name).collect();
        println!("xtask: missing {}; installing {} with apt-get", names.join(", "), packages.join(" "));
        apt_install(&packages)?;
    }
    for item in &missing {
        if let Install::Cargo(args) = item.install {
            println!("xtask: missing {}; installing it: cargo install {} (a few minutes)", item.name, args.join(" "));
            run_timed(
                {
                    let mut c = cargo();
                    c.arg("install").args(args);
                    c
                },
                item.name,
            )?;
        }
    }
    if missing.iter().any(|i| matches!(i.install, Install::Python)) {
        println!("xtask: missing the tests' Python gRPC client; installing {}", PYTHON_PACKAGES.join(" "));
        python_install()?;
    }
    for item in &missing {
        if !item.present() {
            return Err(format!("{} is still missing after installing it ({})", item.name, item.why));
        }
    }
    Ok(())
}

/// `apt-get update && apt-get install -y PACKAGES`, as root or through
/// passwordless sudo; otherwise an error with the command to run.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let by_hand = format!("sudo apt-get update && sudo apt-get install -y {}", packages.join(" "));
    if !Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "no apt-get here: install {} with this system's package manager (on Debian/Ubuntu: {by_hand})",
            packages.join(", ")
        ));
    }
    let prefix: &[&str] = if is_root() {
        &[]
    } else if succeeds(Command::new("sudo").args(["-n", "true"])) {
        &["sudo", "-n"]
    } else {
        return Err(format!(
            "installing needs root; run this, then the same cargo xtask command again:\n    {by_hand}"
        ));
    };
    let apt = |args: &[&str]| {
        let words: Vec<&str> = prefix.iter().copied().chain(["apt-get"]).chain(args.iter().copied()).collect();
        let mut command = Command::new(words[0]);
        command.args(&words[1..]).env("DEBIAN_FRONTEND", "noninteractive");
        println!("xtask: {}", describe(&command));
        command
    };
    run(apt(&["update", "-qq"]))?;
    let mut install = vec!["install", "-y", "-qq", "--no-install-recommends"];
    install.extend_from_slice(packages);
    run(apt(&install)).map_err(|e| format!("{e}\n    by hand: {by_hand}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// libclang as clang-sys finds it (a `libclang*.so*` other than libclang-cpp
/// in `LIBCLANG_PATH` or the usual library directories), plus clang's own
/// headers (`stddef.h`), without which bindgen fails on RocksDB's `c.h`.
fn libclang_present() -> bool {
    let mut lib_dirs: Vec<PathBuf> = env::var_os("LIBCLANG_PATH").map(PathBuf::from).into_iter().collect();
    lib_dirs.extend(
        ["/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"]
            .map(PathBuf::from),
    );
    let llvm_dirs = children("/usr/lib").into_iter().filter(|p| file_name(p).starts_with("llvm-"));
    let llvm_libs: Vec<PathBuf> = llvm_dirs.map(|p| p.join("lib")).collect();
    lib_dirs.extend(llvm_libs.iter().cloned());
    let is_libclang = |p: &PathBuf| {
        let name = file_name(p);
        name.starts_with("libclang")
            && name.contains(".so")
            && !name.starts_with("libclang-cpp")
            && !name.starts_with("libclang_rt")
    };
    let library = lib_dirs.iter().any(|dir| children(dir).iter().any(is_libclang));
    // clang's resource dir: <llvm>/lib/clang/<version>/include/stddef.h.
    let mut resource_roots: Vec<PathBuf> = llvm_libs.iter().map(|l| l.join("clang")).collect();
    resource_roots.push(PathBuf::from("/usr/lib/clang"));
    let headers =
        resource_roots.iter().flat_map(children).any(|version| version.join("include").join("stddef.h").is_file());
    library && headers
}

fn cxx_present() -> bool {
    let candidates: Vec<String> =
        env::var("CXX").into_iter().chain(["c++", "g++", "clang++"].map(String::from)).collect();
    candidates.iter().any(|cxx| succeeds(Command::new(cxx).arg("--version")))
}

/// Runs a cargo build, timed; says first when it is the cold one.
fn build(cargo_args: &[&str], what: &str) -> Result<(), String> {
    if rocksdb_archive(&target_dir()?, "debug").is_none() {
        println!("xtask: {COLD_BUILD_NOTE}");
    }
    let mut command = cargo();
    command.args(cargo_args);
    run_timed(command, what)
}

/// Runs `command` to completion, says how long it took, and without a
/// terminal prints a line every [`QUIET_BUILD_TICK`] while it runs.
fn run_timed(command: Command, what: &str) -> Result<(), String> {
    let started = Instant::now();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let ticker = (!std::io::stderr().is_terminal()).then(|| {
        let what = what.to_string();
        thread::spawn(move || {
            while done_rx.recv_timeout(QUIET_BUILD_TICK).is_err_and(|e| e == mpsc::RecvTimeoutError::Timeout) {
                println!("xtask: still building {what} ({:.0} min so far)", started.elapsed().as_secs_f64() / 60.0);
            }
        })
    });
    let result = run(command);
    drop(done_tx);
    if let Some(ticker) = ticker {
        let _ = ticker.join();
    }
    result?;
    let seconds = started.elapsed().as_secs_f64();
    if seconds >= 1.0 {
        println!("xtask: built {what} in {}", minutes_seconds(seconds));
    }
    Ok(())
}

fn minutes_seconds(seconds: f64) -> String {
    let whole = seconds.round() as u64;
    if whole >= 60 { format!("{} min {:02} s", whole / 60, whole % 60) } else { format!("{whole} s") }
}

fn run(mut command: Command) -> Result<(), String> {
    let status = command.status().map_err(|e| format!("could not start {}: {e}", describe(&command)))?;
    if status.success() { Ok(()) } else { Err(format!("{} failed ({status})", describe(&command))) }
}

/// Replaces this process with `command` (so Ctrl-C and exit codes are the
/// task's own); returns only on failure.
fn exec(command: &mut Command) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let err = command.exec();
    Err(format!("could not start {}: {err}", describe(command)))
}

fn succeeds(command: &mut Command) -> bool {
    command.output().map(|out| out.status.success()).unwrap_or(false)
}

/// The cargo that runs us (`cargo xtask` sets `CARGO`), else the one on PATH.
fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// The workspace's target dir: `CARGO_TARGET_DIR`, else what cargo says.
fn target_dir() -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    json_string_field(&String::from_utf8_lossy(&out.stdout), "target_directory")
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata printed no target_directory".to_string())
}

/// The value of the first `"field":"…"` in `json` (a path: cargo escapes
/// only `\` and `"` in it).
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\":\""))? + field.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

/// The newest `librocksdb.a` a `profile` build left in its build-script
/// output directories.
fn rocksdb_archive(target: &Path, profile: &str) -> Option<PathBuf> {
    children(target.join(profile).join("build"))
        .into_iter()
        .filter(|dir| file_name(dir).starts_with("librocksdb-sys-"))
        .map(|dir| dir.join("out").join("librocksdb.a"))
        .filter_map(|archive| {
            let modified = fs::metadata(&archive).and_then(|m| m.modified()).ok()?;
            Some((modified, archive))
        })
        .max_by_key(|(modified, _): &(SystemTime, PathBuf)| *modified)
        .map(|(_, archive)| archive)
}

fn children(dir: impl AsRef<Path>) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default()
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_target_directory_in_cargo_metadata() {
        let json = r#"{"packages":[],"target_directory":"/home/a \"b\"\\c/target","version":1}"#;
        assert_eq!(json_string_field(json, "target_directory").as_deref(), Some(r#"/home/a "b"\c/target"#));
        assert_eq!(json_string_field(json, "workspace_root"), None);
        assert_eq!(json_string_field(r#"{"target_directory":"/unterminated"#, "target_directory"), None);
    }

    #[test]
    fn finds_the_newest_rocksdb_archive() {
        let target = std::env::temp_dir().join(format!("xtask-test-{}", std::process::id()));
        let build = target.join("debug").join("build");
        assert_eq!(rocksdb_archive(&target, "debug"), None);
        for hash in ["librocksdb-sys-aaaa", "librocksdb-sys-bbbb", "lz4-sys-cccc"] {
            fs::create_dir_all(build.join(hash).join("out")).unwrap();
        }
        // A build-script dir without an archive (a failed build) is skipped.
        assert_eq!(rocksdb_archive(&target, "debug"), None);
        let write_at = |path: &str, seconds: u64| {
            let file = fs::File::create(build.join(path)).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)).unwrap();
        };
        write_at("librocksdb-sys-aaaa/out/librocksdb.a", 2_000);
        write_at("lz4-sys-cccc/out/librocksdb.a", 9_000);
        assert_eq!(rocksdb_archive(&target, "debug"), Some(build.join("librocksdb-sys-aaaa/out/librocksdb.a")));
        write_at("librocksdb-sys-bbbb/out/librocksdb.a", 3_000);
        assert_eq!(rocksdb_archive(&target, "debug"), Some(build.join("librocksdb-sys-bbbb/out/librocksdb.a")));
        assert_eq!(rocksdb_archive(&target, "release"), None);
        fs::remove_dir_all(&target).unwrap();
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(minutes_seconds(4.4), "4 s");
        assert_eq!(minutes_seconds(59.6), "1 min 00 s");
        assert_eq!(minutes_seconds(1625.0), "27 min 05 s");
    }
}
