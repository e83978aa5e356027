//! The layering invariants of docs/ARCHITECTURE.md, checked on `cargo metadata`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// The host's target triple, as `rustc -vV` prints it.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .trim()
        .to_owned()
}

/// Normal (non-dev, non-build) dependency edges between packages, by package name.
fn dependency_graph() -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        // Only the host's packages: a new user's registry holds what the build downloaded,
        // and other platforms' dependencies (android_system_properties, ...) are not there.
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let name_of: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("id"),
                p["name"].as_str().expect("name"),
            )
        })
        .collect();
    let members: BTreeSet<String> = meta["workspace_members"]
        .as_array()
        .expect("workspace_members")
        .iter()
        .map(|id| name_of[id.as_str().expect("id")].to_owned())
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let from = name_of[node["id"].as_str().expect("id")].to_owned();
        let entry = graph.entry(from).or_default();
        for dep in node["deps"].as_array().expect("deps") {
            let normal = dep["dep_kinds"]
                .as_array()
                .expect("dep_kinds")
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                entry.insert(name_of[dep["pkg"].as_str().expect("pkg")].to_owned());
            }
        }
    }
    (members, graph)
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, target: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(p) = stack.pop() {
        if p == target {
            return true;
        }
        if seen.insert(p.clone()) {
            stack.extend(graph.get(&p).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn only_models_and_train_link_libtorch() {
    let (members, graph) = dependency_graph();
    // The crates that link libtorch by design, and those built on them.
    let direct: BTreeSet<&str> = ["concord-models", "concord-train"].into();
    let above: BTreeSet<&str> = ["concord-cli", "concord-benches"].into();
    for member in &members {
        let links = reaches(&graph, member, "tch") || reaches(&graph, member, "torch-sys");
        if direct.contains(member.as_str()) {
            assert!(links, "{member} is meant to link libtorch");
        } else if !above.contains(member.as_str()) {
            assert!(!links, "{member} must not depend on tch or torch-sys");
        }
    }
    for name in [
        "concord-align",
        "concord-align-py",
        "concord-store",
        "concord-report",
        "concord-core",
        "xtask",
    ] {
        assert!(members.contains(name), "{name} is a workspace member");
    }
    for name in [
        "concord-align",
        "concord-align-py",
        "concord-store",
        "concord-report",
    ] {
        assert!(
            !reaches(&graph, name, "concord-models") && !reaches(&graph, name, "concord-train")
        );
    }
}

#[test]
fn only_store_and_report_touch_parquet() {
    // Direct dependencies: crates above the store and the report reach parquet through them.
    let (members, graph) = dependency_graph();
    let allowed: BTreeSet<&str> = ["concord-store", "concord-report"].into();
    for member in &members {
        let direct = &graph[member.as_str()];
        if !allowed.contains(member.as_str()) {
            assert!(
                !direct.contains("parquet") && !direct.contains("arrow"),
                "{member} must not use parquet or arrow directly"
            );
        }
    }
    assert!(graph["concord-store"].contains("parquet"));
    for pure in [
        "concord-align",
        "concord-align-py",
        "concord-core",
        "concord-models",
        "concord-train",
    ] {
        assert!(
            !reaches(&graph, pure, "parquet"),
            "{pure} must not depend on parquet"
        );
    }
}
