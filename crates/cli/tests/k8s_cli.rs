//! `agentbox serve --backend kubernetes` from the outside: without a reachable cluster it fails
//! fast with a message that says what to do, and the install manifests pass only flags the binary
//! knows (with values it accepts). No cluster and no root needed.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_agentbox")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn serve_kubernetes_without_a_reachable_cluster_exits_nonzero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n\
         clusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: not-a-real-token\n\
         contexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: u\n",
    )
    .unwrap();
    let start = Instant::now();
    let mut child = Command::new(bin())
        .args(["serve", "--backend", "kubernetes", "--listen", "127.0.0.1:0", "--e2b-listen", "127.0.0.1:0"])
        .args(["--proxy-listen", "127.0.0.1:0", "--no-default-pool", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("AGENTBOX_BACKEND")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded wait: a server that starts despite the missing cluster must not hang the test.
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("agentbox serve --backend kubernetes still runs after 30s with no cluster");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "exit status {status}; stderr: {stderr}");
    assert!(start.elapsed() < Duration::from_secs(15), "took {:?}", start.elapsed());
    for want in ["cannot use --backend kubernetes", "127.0.0.1:1", "not reachable", "KUBECONFIG"] {
        assert!(stderr.contains(want), "stderr lacks {want:?}: {stderr}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"), "it must not start serving");
}

#[test]
fn the_kustomize_deployment_passes_flags_that_agentbox_serve_accepts() {
    let text = std::fs::read_to_string(repo().join("deploy/kustomize/deployment.yaml")).unwrap();
    let d: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let args: Vec<String> = d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args[0], "serve");
    let help = Command::new(bin()).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "`agentbox serve --help` does not list {flag} (from {a})");
    }
    // clap parses (and validates) every argument before acting on the trailing --help: a wrong
    // flag or an invalid value fails here.
    let out = Command::new(bin()).args(&args).arg("--help").output().unwrap();
    assert!(out.status.success(), "agentbox {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}
