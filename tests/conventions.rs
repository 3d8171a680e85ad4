//! Conventions the code keeps, checked on its sources (no stack needed):
//! every metric is emitted from an `events.rs` module, one type per
//! observable event, and docs/architecture.md's metrics table names exactly
//! the metrics the code defines.

use std::collections::{BTreeMap, BTreeSet};
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

/// The modules of one crate (`a`, `a::b`) and their files, the crate root
/// (`lib.rs`, `main.rs`) left out: it declares the modules and holds what
/// they share.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    walk(src, &mut files);
    files
        .into_iter()
        .filter_map(|path| {
            let relative = path.strip_prefix(src).ok()?.with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                return None;
            }
            Some((parts.join("::"), path))
        })
        .collect()
}

/// The paths a source names after `crate::`, groups (`crate::{a, b::c}`)
/// spread out. Test modules are left out: they may use anything.
fn crate_paths(text: &str) -> Vec<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut paths = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            let mut depth = 0;
            let mut item = String::new();
            for c in group[..end].chars().chain([',']) {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths.push(path_prefix(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            paths.push(path_prefix(rest));
        }
    }
    paths
}

/// `a::b::c` of `a::b::c(...)`, `a::b::{x, y}`, `a::b as z`.
fn path_prefix(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_owned()
}

/// Module → modules of the same crate it names (not its own parents or
/// children).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    modules
        .iter()
        .map(|(name, path)| {
            let text = std::fs::read_to_string(path).expect("readable source");
            let uses = crate_paths(&text)
                .into_iter()
                .filter_map(|named| {
                    let parts: Vec<&str> = named.split("::").collect();
                    (1..=parts.len())
                        .rev()
                        .map(|n| parts[..n].join("::"))
                        .find(|candidate| modules.contains_key(candidate))
                })
                .filter(|used| {
                    used != name
                        && !name.starts_with(&format!("{used}::"))
                        && !used.starts_with(&format!("{name}::"))
                })
                .collect();
            (name.clone(), uses)
        })
        .collect()
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Search<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut search = Search {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !search.index.contains_key(v.as_str()) {
            search.visit(v);
        }
    }
    search.found
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_reads_grouped_imports() {
    assert_eq!(
        crate_paths("use crate::{a, b::{c, d}, e as f};\nlet x = crate::g::h(1);"),
        ["a", "b::", "e", "g::h"].map(|s| s.trim_end_matches(':').to_owned())
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}

#[test]
fn no_two_modules_of_a_crate_import_each_other() {
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .flatten()
        .map(|e| e.path().join("src"))
        .collect();
    crates.push(root().join("src"));
    let mut found = Vec::new();
    let mut modules = 0;
    for src in &crates {
        let graph = module_graph(src);
        modules += graph.len();
        for cycle in cycles(&graph) {
            found.push(format!("{}: {}", src.display(), cycle.join(" <-> ")));
        }
    }
    assert!(modules > 60, "only {modules} modules found");
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}
