//! Conventions the code keeps, checked on its sources (no stack needed):
//! every metric is emitted from an `events.rs` module, one type per
//! observable event, and docs/architecture.md's metrics table names exactly
//! the metrics the code defines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Rust source of the product: `src/` and each crate's `src/`.
fn sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("src"), &mut out);
    for krate in std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .flatten()
    {
        walk(&krate.path().join("src"), &mut out);
    }
    assert!(out.len() > 50, "found only {} sources", out.len());
    out.sort();
    out
}

fn is_events_module(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "events.rs")
}

const METRIC_MACROS: [&str; 3] = ["counter!(", "gauge!(", "histogram!("];

#[test]
fn metrics_are_emitted_only_from_events_modules() {
    let mut outside = Vec::new();
    let mut inside = 0;
    for path in sources() {
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if METRIC_MACROS.iter().any(|m| line.contains(m)) {
                if is_events_module(&path) {
                    inside += 1;
                } else {
                    let shown = path.strip_prefix(root()).unwrap_or(&path).display();
                    outside.push(format!("{shown}:{}: {}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        outside.is_empty(),
        "metric macros outside events.rs (give the event a type in its crate's events.rs):\n{}",
        outside.join("\n")
    );
    assert!(
        inside > 50,
        "only {inside} metric macros found in events modules"
    );
}

/// `aaa_…` names in `text` (letters, digits, underscores).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("aaa_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + 4;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary && end > start + 4 {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The metric names the code defines: the `&str` constants of events modules.
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for path in sources().into_iter().filter(|p| is_events_module(p)) {
        let text = std::fs::read_to_string(&path).expect("readable source");
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("pub const") && line.contains(": &str") || line.starts_with('"') {
                names.extend(metric_names(line));
            }
        }
    }
    names
}

#[test]
fn the_architecture_docs_list_exactly_the_metrics_the_code_defines() {
    let docs =
        std::fs::read_to_string(root().join("docs/architecture.md")).expect("docs/architecture.md");
    let section = docs
        .split("\n## ")
        .find(|s| s.starts_with("Metrics\n"))
        .expect("a '## Metrics' section");
    let table: String = section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split(" | ").next().unwrap_or_default().to_owned() + "\n")
        .collect();
    let documented = metric_names(&table);
    let defined = defined_metrics();
    assert!(defined.len() > 60, "only {} metrics defined", defined.len());
    let undocumented: Vec<_> = defined.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&defined).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/architecture.md's metrics table and the code differ:\n  defined in an events.rs, not in the table: {undocumented:?}\n  in the table, defined nowhere: {unknown:?}"
    );
}
