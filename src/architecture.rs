//! The extension's layering, checked from its own sources: which way imports point, that no
//! module imports the worker, and that there is no import cycle between files.  ARCHITECTURE.md
//! describes the same rules; this keeps them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, bottom up.  A module may import from its own layer (without cycles) and below.
const LAYERS: &[&[&str]] = &[
    &["pg"],
    &["catalog"],
    &[
        "jobs",
        "methods",
        "verification",
        "recovery",
        "retention",
        "offsite",
        "monitoring",
    ],
    &["sqlstate", "worker"],
];

/// Test-only helpers, and the test itself, are not part of the layering.
const OUTSIDE: &[&str] = &["testing", "architecture", "pg_test"];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Every `.rs` file under `src/`, as a module path (`worker::claim`, `pg`, ...).
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            if parts == ["lib"] {
                continue;
            }
            out.insert(parts.join("::"), std::fs::read_to_string(&p).unwrap());
        }
    }
    out
}

/// The code of a file without comments and without its `#[cfg(test)]`/pg_test modules (test
/// code may import test helpers from anywhere).
fn without_tests(text: &str) -> String {
    let cut = [
        "#[cfg(test)]\nmod",
        "#[cfg(any(test, feature = \"pg_test\"))]\n#[pgrx::pg_schema]",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min()
    .unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file refers to with `crate::…` paths (in `use` lists and inline), resolved to
/// the longest module path that exists.
fn imports(text: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code = without_tests(text);
    let mut rest = code.as_str();
    // Group imports `use crate::{a::b, c}` are not used in this crate; inline and single paths are.
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
        for n in (1..=parts.len()).rev() {
            let candidate = parts[..n].join("::");
            if known.contains_key(&candidate) {
                out.insert(candidate);
                break;
            }
        }
        // `crate::x::{a, b}`: each name in braces may be a module of its own.
        if let Some(after) = rest.strip_prefix(path.as_str()) {
            if let Some(list) = after.strip_prefix('{') {
                let base = path.trim_end_matches("::");
                for item in list.split('}').next().unwrap_or("").split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").trim();
                    let candidate = format!("{base}::{name}");
                    if known.contains_key(&candidate) {
                        out.insert(candidate);
                    } else if known.contains_key(base) {
                        out.insert(base.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// `super::x` inside module `m` is `parent(m)::x`.
fn super_imports(module: &str, text: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let parent = module.rsplit_once("::").map(|(p, _)| p).unwrap_or("");
    let code = without_tests(text);
    let mut rest = code.as_str();
    while let Some(i) = rest.find("super::") {
        rest = &rest[i + "super::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let candidate = if parent.is_empty() {
            name
        } else {
            format!("{parent}::{name}")
        };
        if known.contains_key(&candidate) {
            out.insert(candidate);
        } else if known.contains_key(parent) {
            out.insert(parent.to_owned());
        }
    }
    out
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn imports_point_down_and_never_into_the_worker() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in &known {
        if OUTSIDE.contains(&top(module)) {
            continue;
        }
        let Some(from_layer) = layer_of(top(module)) else {
            problems.push(format!(
                "{module}: its folder is in no layer (add it to LAYERS and ARCHITECTURE.md)"
            ));
            continue;
        };
        let mut deps = imports(text, &known);
        deps.extend(super_imports(module, text, &known));
        deps.retain(|d| d != module && !OUTSIDE.contains(&top(d)));
        for d in &deps {
            let to_layer = layer_of(top(d)).unwrap_or(usize::MAX);
            if to_layer > from_layer {
                problems.push(format!("{module} imports {d}, a layer above it"));
            }
            if top(d) == "worker" && top(module) != "worker" {
                problems.push(format!("{module} imports the worker ({d})"));
            }
            if top(d) == "sqlstate" {
                problems.push(format!("{module} imports sqlstate (use pg::sql_error)"));
            }
        }
        graph.insert(module.clone(), deps);
    }
    // Cycles, by depth-first search.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
        cycles: &mut Vec<String>,
    ) {
        state.insert(m.to_owned(), 1);
        stack.push(m.to_owned());
        for d in graph.get(m).into_iter().flatten() {
            match state.get(d.as_str()) {
                Some(1) => {
                    let start = stack.iter().position(|s| s == d).unwrap_or(0);
                    cycles.push(format!("{} -> {d}", stack[start..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(d, graph, state, stack, cycles),
            }
        }
        stack.pop();
        state.insert(m.to_owned(), 2);
    }
    let mut state = BTreeMap::new();
    let mut cycles = Vec::new();
    for m in graph.keys() {
        if !state.contains_key(m) {
            visit(m, &graph, &mut state, &mut Vec::new(), &mut cycles);
        }
    }
    problems.extend(cycles.into_iter().map(|c| format!("import cycle: {c}")));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        graph.len() > 20,
        "the walk found too few modules: {graph:?}"
    );
}

#[test]
fn no_source_file_is_over_about_700_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for dir in [
        "src",
        "core/src",
        "cli/src",
        "pgrx-tests/src",
        "pgrx-tests/tests",
    ] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let lines = std::fs::read_to_string(&p).unwrap().lines().count();
                    if lines > 750 {
                        long.push(format!("{} ({lines} lines)", p.display()));
                    }
                }
            }
        }
    }
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn every_unsafe_block_says_why_it_is_safe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut missing = Vec::new();
    for dir in ["src", "core/src", "cli/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                    continue;
                }
                if p.extension().is_none_or(|x| x != "rs") || p.ends_with("architecture.rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    let opens_block = code.contains("unsafe {")
                        || code.trim_end().ends_with("unsafe")
                        || (code.contains("unsafe ")
                            && code.contains("{ ")
                            && !code.contains("fn "));
                    if !opens_block || code.contains("unsafe fn") || code.contains("unsafe extern")
                    {
                        continue;
                    }
                    // The SAFETY note sits above the block (within a few lines, the statement
                    // may start earlier) or on the same line.
                    let noted = line.contains("SAFETY")
                        || lines[i.saturating_sub(4)..i]
                            .iter()
                            .any(|l| l.contains("SAFETY"));
                    if !noted {
                        missing.push(format!("{}:{}", p.display(), i + 1));
                    }
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe blocks without a SAFETY note: {missing:?}"
    );
}
