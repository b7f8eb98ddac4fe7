//! The deployment files in `deploy/` name only settings geokv has, and the
//! systemd environment file starts a working TLS cluster as it stands
//! (only the per-host values changed to this machine's).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use geokv_tests::{free_port, wait_for};

fn deploy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `GEOKV_*` variable and every `--flag=` the files pass to geokv is
/// one `geokv --help` documents.
#[test]
fn every_setting_the_deploy_files_use_exists() {
    let help = Command::new(env!("CARGO_BIN_EXE_geokv-node")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let files = ["systemd/geokv.env", "systemd/geokv.service", "container/Dockerfile", "kubernetes/geokv.yaml"];
    let mut checked = 0;
    for file in files {
        let text = deploy(file);
        for (at, _) in text.match_indices("GEOKV_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit()).collect();
            if name == "GEOKV_" {
                continue; // "GEOKV_*" in prose
            }
            assert!(help.contains(&format!("[env: {name}=")), "{file}: {name} is not a setting of geokv");
            checked += 1;
        }
        if file.ends_with(".yaml") {
            // The container's arguments (comments hold kubectl's flags).
            for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
                for (at, _) in line.match_indices("--") {
                    let flag: String = line[at..].chars().take_while(|c| *c != '=' && !c.is_whitespace()).collect();
                    if flag.len() > 2 && line[at + flag.len()..].starts_with('=') {
                        assert!(help.contains(&format!("{flag} <")), "{file}: {flag} is not a flag of geokv");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked >= 20, "{checked} settings checked");
}

/// Kills the node processes when dropped.
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// deploy/systemd/geokv.env for three nodes on this machine: its settings
/// as they are, but for the addresses, ids, data and certificate paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_environment_file_starts_a_tls_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let validity = geokv_server::certs::Validity::days(1);
    geokv_server::certs::create_ca(&certs, validity).unwrap();
    geokv_server::certs::create_node(&certs, "node", &["127.0.0.1".into()], validity).unwrap();
    geokv_server::certs::create_client(&certs, "root", validity).unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let regions = ["us-east", "us-west", "eu-west"];
    let initial: Vec<String> = (0..3).map(|i| format!("{}=127.0.0.1:{}@{}", i + 1, ports[i], regions[i])).collect();
    let template: Vec<(String, String)> = deploy("systemd/geokv.env")
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains('='))
        .map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).unwrap())
        .collect();
    let mut nodes = Nodes(Vec::new());
    for (i, port) in ports.iter().enumerate() {
        let path = |name: &str| -> PathBuf { certs.join(name) };
        let env: Vec<(String, String)> = template
            .iter()
            .map(|(k, v)| {
                let v = match k.as_str() {
                    "GEOKV_NODE_ID" => (i + 1).to_string(),
                    "GEOKV_LISTEN" => format!("127.0.0.1:{port}"),
                    "GEOKV_METRICS_LISTEN" => format!("127.0.0.1:{}", free_port()),
                    "GEOKV_DATA_DIR" => dir.path().join(format!("node-{i}")).display().to_string(),
                    "GEOKV_INITIAL_CLUSTER" => initial.join(","),
                    "GEOKV_TLS_CA" => path("ca.pem").display().to_string(),
                    "GEOKV_TLS_CERT" => path("node.pem").display().to_string(),
                    "GEOKV_TLS_KEY" => path("node-key.pem").display().to_string(),
                    _ => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        let log = std::fs::File::create(dir.path().join(format!("node-{i}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_geokv-node"))
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.0.push(child);
    }
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let tls = geokv_client::ClientTls::new(ca).identity(
        std::fs::read(certs.join("client.root.pem")).unwrap(),
        std::fs::read(certs.join("client.root-key.pem")).unwrap(),
    );
    let endpoints: Vec<String> = ports.iter().map(|p| format!("https://127.0.0.1:{p}")).collect();
    let client = wait_for("the cluster to take a write", Duration::from_secs(60), || {
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        async move {
            let mut config = geokv_client::ClientConfig::new(endpoints);
            config.deadline = Duration::from_secs(5);
            let client = config.tls(Some(tls)).connect().await.ok()?;
            client.put("deployed", "yes").await.ok()?;
            Some(client)
        }
    })
    .await;
    let got = client.get("deployed").await.unwrap().map(|v| v.value);
    assert_eq!(got.as_deref(), Some(&b"yes"[..]));
    let log = std::fs::read_to_string(dir.path().join("node-0.log")).unwrap();
    let first = log.lines().next().unwrap_or_default();
    assert!(serde_json::from_str::<serde_json::Value>(first).is_ok(), "GEOKV_LOG_FORMAT=json: {first}");
}
