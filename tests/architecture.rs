//! Issue 20: the picture of the crates in docs/ARCHITECTURE.md cannot go stale. Its `edges` list
//! (one `crate -> crate` a line) is held equal to the workspace's dependencies as `cargo
//! metadata` reports them (normal dependencies between the workspace's own crates), and the
//! picture above it names every crate; a change that moves an edge must move the picture too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

type Edge = (String, String);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of the fenced block whose info string is `info`; panics where there is none.
fn block<'a>(text: &'a str, info: &str) -> Vec<&'a str> {
    let open = format!("```{info}\n");
    let start = text.find(&open).unwrap_or_else(|| panic!("no ```{info} block")) + open.len();
    let end = start + text[start..].find("```").expect("the block is closed");
    text[start..end].lines().filter(|l| !l.trim().is_empty()).collect()
}

fn documented(text: &str) -> BTreeSet<Edge> {
    block(text, "edges")
        .into_iter()
        .map(|line| {
            let (from, to) = line
                .split_once(" -> ")
                .unwrap_or_else(|| panic!("`{line}`: expected `crate -> crate`"));
            (from.trim().to_string(), to.trim().to_string())
        })
        .collect()
}

/// The workspace's crates and the normal dependencies among them, from `cargo metadata`.
fn workspace() -> (BTreeSet<String>, BTreeSet<Edge>) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let packages = meta["packages"].as_array().expect("packages");
    let names: BTreeSet<String> =
        packages.iter().map(|p| p["name"].as_str().expect("a name").to_string()).collect();
    let mut edges = BTreeSet::new();
    for p in packages {
        for d in p["dependencies"].as_array().expect("dependencies") {
            let to = d["name"].as_str().expect("a name");
            if d["kind"].is_null() && names.contains(to) {
                edges.insert((p["name"].as_str().unwrap().to_string(), to.to_string()));
            }
        }
    }
    (names, edges)
}

#[test]
fn issue_20_the_architecture_lists_the_crate_edges_cargo_metadata_reports() {
    let text = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let (crates, real) = workspace();
    let listed = documented(&text);
    let missing: Vec<_> = real.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&real).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/ARCHITECTURE.md's edges are not the workspace's: missing {missing:?}, extra \
         {extra:?}; redraw the picture and its list"
    );
    let picture = block(&text, "text").join("\n");
    for c in &crates {
        assert!(picture.contains(c.as_str()), "the picture does not show {c}");
    }
}

#[test]
fn issue_20_an_edge_list_reads_as_crate_arrow_crate() {
    let text = "x\n```edges\na -> b\n\nb -> c\n```\n";
    let edges = documented(text);
    let want: BTreeSet<Edge> =
        [("a", "b"), ("b", "c")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(edges, want);
    let bad = std::panic::catch_unwind(|| documented("```edges\na => b\n```\n"));
    assert!(bad.is_err(), "a line that is not `crate -> crate` is refused");
}
