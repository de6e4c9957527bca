//! The agent's module layout: no file imports one that imports it back (directly or around
//! a longer cycle), and no folder of `agent/src` depends on one that depends on it. Every
//! `crate::`, `super::` and child-module path outside `#[cfg(test)]` modules counts.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sonde_tests::workspace_root;

type Module = Vec<String>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `conn/mod.rs` -> [conn], `protocols/http1/session.rs` -> [protocols, http1, session].
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The longest prefix of `path` that is a module.
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|i| path[..i].to_vec())
        .find(|m| modules.contains(m))
}

/// Paths after `prefix` in `code`: `crate::a::b::C` gives [a, b, C].
fn paths_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = Vec<String>> + 'a {
    code.match_indices(prefix).filter_map(move |(i, _)| {
        let before = code[..i].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        (!path.is_empty()).then_some(path)
    })
}

fn dependencies(modules: &BTreeSet<Module>, me: &Module, code: &str) -> BTreeSet<Module> {
    let mut deps = BTreeSet::new();
    for path in paths_after(code, "crate::") {
        deps.extend(resolve(modules, &path));
    }
    for path in paths_after(code, "super::") {
        let mut full = me[..me.len().saturating_sub(1)].to_vec();
        full.extend(path);
        deps.extend(resolve(modules, &full));
    }
    // A child module named without `self::` (`use session::X;`, `http1::HttpSession`).
    for child in modules
        .iter()
        .filter(|m| m.len() == me.len() + 1 && m.starts_with(me))
    {
        let name = child.last().unwrap();
        if code.contains(&format!(" {name}::")) || code.contains(&format!("({name}::")) {
            deps.insert(child.clone());
        }
    }
    deps.remove(me);
    deps
}

fn find_cycle<T: Ord + Clone>(graph: &BTreeMap<T, BTreeSet<T>>) -> Option<Vec<T>> {
    fn visit<T: Ord + Clone>(
        node: &T,
        graph: &BTreeMap<T, BTreeSet<T>>,
        state: &mut BTreeMap<T, bool>,
        stack: &mut Vec<T>,
    ) -> Option<Vec<T>> {
        state.insert(node.clone(), false);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(false) => {
                    let start = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(true) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.clone(), true);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            if let Some(c) = visit(node, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = workspace_root().join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut files_graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut folders_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = module_of(&src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let code = text
            .find("#[cfg(test)]\nmod tests")
            .map_or(text.as_str(), |i| &text[..i]);
        let deps = dependencies(&modules, &me, code);
        for dep in &deps {
            if let (Some(a), Some(b)) = (me.first(), dep.first()) {
                if a != b {
                    folders_graph
                        .entry(a.clone())
                        .or_default()
                        .insert(b.clone());
                }
            }
        }
        files_graph.insert(me, deps);
    }
    assert!(
        files_graph.len() > 40,
        "found {} modules",
        files_graph.len()
    );
    let show = |c: Vec<Module>| -> Vec<String> { c.iter().map(|m| m.join("::")).collect() };
    assert_eq!(find_cycle(&files_graph).map(show), None, "a cycle of files");
    assert_eq!(find_cycle(&folders_graph), None, "a cycle of folders");
    // Layers: each may use those before it, never one after it (conn feeds protocols'
    // sessions and reports to telemetry through a trait telemetry implements; traces, the
    // place of each call in a trace, is chosen as protocols report requests starting).
    let layers = [
        "identity",
        "capture",
        "traces",
        "protocols",
        "conn",
        "telemetry",
        "export",
    ];
    for (i, layer) in layers.iter().enumerate() {
        let deps = folders_graph.get(*layer).cloned().unwrap_or_default();
        for later in &layers[i + 1..] {
            assert!(
                !deps.contains(*later),
                "{layer} depends on {later}, a later layer"
            );
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let graph: BTreeMap<&str, BTreeSet<&str>> = [
        ("conn", BTreeSet::from(["db"])),
        ("db", BTreeSet::from(["process"])),
        ("process", BTreeSet::from(["conn"])),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["conn", "db", "process", "conn"])
    );
    let modules: BTreeSet<Module> = [vec!["conn".to_string()], vec!["db".to_string()]]
        .into_iter()
        .collect();
    let deps = dependencies(
        &modules,
        &vec!["conn".to_string()],
        "use crate::db::DbCall;\nfn f() { crate::conn::x(); }",
    );
    assert_eq!(deps, BTreeSet::from([vec!["db".to_string()]]));
}
