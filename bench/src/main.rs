//! `geokv-bench`: see the crate docs (`src/lib.rs`) and `docs/benchmarks.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};
use geokv_bench::cluster::System;
use geokv_bench::machine::{MachineFacts, load_average};
use geokv_bench::report;
use geokv_bench::scenario::{self, Settings};
use geokv_lab::NodeProgram;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Both systems on this machine, no added latency.
    Local,
    /// geokv in the lab across us-east, us-west, eu-west.
    #[value(name = "3-region")]
    ThreeRegion,
    /// geokv in the lab across five regions.
    #[value(name = "5-region")]
    FiveRegion,
    /// SIGKILL the leader under write load; time until writes succeed again.
    Failover,
}

#[derive(Debug, Parser)]
#[command(
    name = "geokv-bench",
    about = "Latency/throughput of geokv side by side with etcd 3.4, interleaved A/B rounds",
    long_about = "Latency/throughput of geokv side by side with etcd 3.4, interleaved A/B rounds.\n\n\
                  Build release binaries first (debug geokv nodes are CPU-bound and their numbers meaningless):\n  \
                  cargo build --release --bin geokv-bench\n  \
                  target/release/geokv-bench --scenario local --quick"
)]
struct Args {
    #[arg(long, value_enum, default_value = "local")]
    scenario: Scenario,
    /// Short run (a few minutes): 3 rounds, 0.5 s warm-up, 2 s per cell, 1 and 64 clients.
    #[arg(long)]
    quick: bool,
    /// Seconds-long run that only checks the tool works (CI).
    #[arg(long)]
    smoke: bool,
    /// Systems to run (comma-separated): geokv, etcd, and geokv-tls (geokv
    /// with TLS and authentication, clients presenting root's certificate;
    /// `local` scenario only), e.g. geokv,geokv-tls for what TLS costs.
    #[arg(long, value_delimiter = ',', default_value = "geokv,etcd")]
    systems: Vec<String>,
    /// Rounds (each runs every target once, alternating which system goes first).
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent closed-loop clients per cell (comma-separated).
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    #[arg(long)]
    warmup_ms: Option<u64>,
    #[arg(long)]
    measure_ms: Option<u64>,
    /// Open loop: offer this many operations per second to every cell (fixed-rate
    /// arrivals, latency from the intended send time); `--clients` is then the
    /// in-flight bound, and arrivals beyond it are dropped and counted as overflow.
    #[arg(long, value_name = "OPS_PER_S")]
    rate: Option<f64>,
    /// Distinct keys (all written before reads).
    #[arg(long)]
    keys: Option<u64>,
    /// Value size in bytes (etcd's published benchmarks use 256).
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Flag a cell when other processes used more than this many cores.
    #[arg(long, default_value_t = 0.25)]
    noise_cores: f64,
    /// Region matrix for WAN scenarios (default: the lab's built-in lab/regions/3-region.toml or 5-region.toml).
    #[arg(long)]
    regions: Option<PathBuf>,
    /// Clients per region in WAN scenarios.
    #[arg(long)]
    wan_clients: Option<usize>,
    /// Leader kills per system in the failover scenario.
    #[arg(long)]
    kills: Option<usize>,
    /// An external `geokv` binary for the nodes (default: this executable's
    /// built-in node, `geokv-bench node`, the same code).
    #[arg(long)]
    geokv_bin: Option<PathBuf>,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    /// Directory for results.json and report.html.
    #[arg(long, default_value = "geokv-bench-results")]
    out: PathBuf,
}

fn settings(args: &Args) -> Result<Settings> {
    let mut systems = Vec::new();
    for s in &args.systems {
        systems.push(match s.as_str() {
            "geokv" => System::Geokv,
            "geokv-tls" => System::GeokvTls,
            "etcd" => System::Etcd,
            other => bail!("unknown system {other:?} (geokv, geokv-tls, etcd)"),
        });
    }
    let wan = matches!(args.scenario, Scenario::ThreeRegion | Scenario::FiveRegion);
    if systems.contains(&System::GeokvTls) && args.scenario != Scenario::Local {
        bail!("geokv-tls runs in the local scenario only (the lab and the failover runs are plaintext)");
    }
    // (rounds, clients, warmup ms, measure ms, keys, wan clients, kills)
    let (rounds, clients, warmup, measure, keys, wan_clients, kills) = if args.smoke {
        // A 1 s window: one put on a loaded debug build can take 300 ms.
        (1, vec![1, 4], 100, 1000, 100, 2, 1)
    } else if args.quick {
        (3, vec![1, 64], 500, 2000, 1000, 8, 3)
    } else {
        (5, vec![1, 8, 64, 256], 2000, 10_000, 10_000, 16, 5)
    };
    let rounds = args.rounds.unwrap_or(if wan && !args.smoke { rounds.min(2) } else { rounds });
    let regions_file = args.regions.clone();
    let settings = Settings {
        geokv: match &args.geokv_bin {
            Some(path) => NodeProgram::Geokv(path.clone()),
            None => NodeProgram::Lab(std::env::current_exe()?),
        },
        etcd_bin: args.etcd_bin.clone(),
        systems,
        rounds,
        clients: args.clients.clone().unwrap_or(clients),
        warmup: Duration::from_millis(args.warmup_ms.unwrap_or(warmup)),
        measure: Duration::from_millis(args.measure_ms.unwrap_or(measure)),
        keys: args.keys.unwrap_or(keys),
        value_bytes: args.value_bytes,
        seed: args.seed,
        noise_cores: args.noise_cores,
        regions_file,
        wan_clients: args.wan_clients.unwrap_or(wan_clients),
        kills: args.kills.unwrap_or(kills),
        rate: args.rate,
    };
    if settings.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of operations per second");
    }
    if settings.rounds == 0
        || settings.keys == 0
        || settings.clients.iter().any(|&c| c == 0 || c > geokv_bench::load::MAX_CLIENTS)
    {
        bail!("rounds, keys and clients (1..={}) must be positive", geokv_bench::load::MAX_CLIENTS);
    }
    if settings.systems.is_empty() {
        bail!("no systems to run");
    }
    Ok(settings)
}

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // `geokv-bench node <geokv flags>` runs one geokv node (the same code as
    // the `geokv` binary, linked in), so one release build is enough.
    if args.get(1).is_some_and(|a| a == "node") {
        let node_args = std::iter::once("geokv".into()).chain(args.into_iter().skip(2));
        return match geokv_server::cli::main_from(node_args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("geokv node: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(Args::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("geokv-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let settings = settings(&args)?;
    let release = !cfg!(debug_assertions);
    let geokv_path = match &settings.geokv {
        NodeProgram::Lab(path) | NodeProgram::Geokv(path) => path.clone(),
    };
    let geokv_release = match &settings.geokv {
        NodeProgram::Lab(_) => release,
        NodeProgram::Geokv(path) => path.components().any(|c| c.as_os_str() == "release"),
    };
    if !release || !geokv_release {
        eprintln!(
            "WARNING: debug build (bench: {}, geokv nodes: {}): geokv's numbers are meaningless next to etcd; \
             use `cargo build --release --bin geokv-bench`",
            if release { "release" } else { "debug" },
            geokv_path.display()
        );
    }
    let mut machine = MachineFacts::collect();
    eprintln!(
        "{} cores ({}), load average {:?}; busiest other processes: {:?}",
        machine.cores, machine.cpu_model, machine.load_average_before, machine.busiest_before
    );
    let started = std::time::Instant::now();
    let (result, text, summaries) = match args.scenario {
        Scenario::Local => scenario::local(&settings).await?,
        Scenario::ThreeRegion | Scenario::FiveRegion => {
            // Without --regions, the lab's own matrices (lab/regions/, built in).
            let matrix = match (&settings.regions_file, args.scenario) {
                (Some(path), _) => geokv_lab::RegionMatrix::from_file(path),
                (None, Scenario::FiveRegion) => geokv_lab::RegionMatrix::parse(geokv_lab::regions::FIVE_REGIONS_TOML),
                (None, _) => Ok(geokv_lab::RegionMatrix::default_matrix()),
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            scenario::wan(&settings, matrix).await?
        }
        Scenario::Failover => scenario::failover(&settings).await?,
    };
    machine.load_average_after = load_average();
    let scenario_name = args.scenario.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    let notes = format!(
        "scenario {scenario_name}; {}; {} rounds; clients {:?} (WAN scenarios: {} per region; failover: {} kills); \
         warm-up {:?}, measured {:?} per cell; {} keys, {}-byte values; seed {}\n\
         machine: {} cores, {}; load average before {:?}, after {:?}; busiest others before: {:?}\n\
         build: bench {}, geokv {}; etcd {}; took {:.0} s",
        match settings.rate {
            Some(rate) => format!("open loop at {rate} ops/s per cell (clients = in-flight bound)"),
            None => "closed loop".to_string(),
        },
        settings.rounds,
        settings.clients,
        settings.wan_clients,
        settings.kills,
        settings.warmup,
        settings.measure,
        settings.keys,
        settings.value_bytes,
        settings.seed,
        machine.cores,
        machine.cpu_model,
        machine.load_average_before,
        machine.load_average_after,
        machine.busiest_before,
        if release { "release" } else { "DEBUG" },
        geokv_path.display(),
        settings.etcd_bin.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{notes}\n\n{text}");
    std::fs::create_dir_all(&args.out)?;
    let command: Vec<String> = std::env::args().collect();
    let json = json!({
        "scenario": scenario_name, "command": command.join(" "), "bench_release_build": release,
        "settings": settings, "machine": machine, "result": result, "notes": notes,
    });
    let json_path = args.out.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    let html_path = args.out.join("report.html");
    std::fs::write(&html_path, report::html(&format!("geokv-bench: {scenario_name}"), &notes, &summaries, &text))?;
    eprintln!("wrote {} and {}", json_path.display(), html_path.display());
    Ok(())
}
