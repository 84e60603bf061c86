//! No import cycle between the top-level modules of `terrarium-systems`: reads every file
//! under `systems/src`, collects the `crate::…` (and escaping `super::…`) paths each top-level
//! module names, and asserts that the graph of those references is acyclic. Test code counts
//! too: a test that needs a module above its own belongs in `systems/tests`.
//!
//! A cycle is how "agents in one place" rots: once `mining` reaches back into `agents`, the two
//! can only be understood (and changed) together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module → the top-level modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn top_level_modules_of_systems_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = read_tree(&src);
    assert!(files.len() > 20, "read {} files under {}", files.len(), src.display());
    let graph = module_graph(&files);
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle between top-level modules: {}\ngraph: {graph:#?}", cycle.join(" → "));
    }
    // What the layout promises: agents use the algorithms, the algorithms know nothing of agents.
    let uses = |a: &str, b: &str| graph.get(a).is_some_and(|s| s.contains(b));
    assert!(uses("agents", "mining") && uses("agents", "pathfinding"), "{graph:#?}");
    for algorithm in ["mining", "pathfinding", "steering", "movement", "wander", "par", "batching"] {
        assert!(!uses(algorithm, "agents"), "{algorithm} names agents: {graph:#?}");
    }
}

#[test]
fn the_checker_finds_a_planted_cycle() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_string());
    let acyclic = vec![
        file("lib.rs", "pub mod a; pub mod b; pub mod c;"),
        file("a/mod.rs", "mod inner;\nuse crate::{b::X, c};\n// crate::c is only a comment here"),
        file("a/inner.rs", "use super::super::c::Y;\nfn f() { crate::b::g(); }"),
        file("b.rs", "use crate::c::Z;\n#[cfg(test)] mod tests { use super::*; }"),
        file("c.rs", "pub struct Z; pub struct Y; pub fn f() -> crate::Thing { todo!() }"),
    ];
    let graph = module_graph(&acyclic);
    let edges: Vec<(&str, &str)> =
        graph.iter().flat_map(|(a, bs)| bs.iter().map(move |b| (a.as_str(), b.as_str()))).collect();
    assert_eq!(edges, [("a", "b"), ("a", "c"), ("b", "c")]);
    assert_eq!(find_cycle(&graph), None);

    // c reaches back to a, through a grouped path in a test module.
    let mut cyclic = acyclic;
    cyclic.push(file("c/extra.rs", "#[cfg(test)]\nmod tests {\n    use crate::{a::{self, Q}};\n}"));
    let cycle = find_cycle(&module_graph(&cyclic)).expect("the planted cycle");
    assert_eq!(cycle.first(), cycle.last());
    for m in ["a", "c"] {
        assert!(cycle.iter().any(|n| n == m), "{cycle:?}");
    }
}

/// Every `.rs` file under `dir`, as (path relative to `dir`, text), in path order.
fn read_tree(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), text));
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file under `src`: `a/b.rs` and `a/b/mod.rs` are `[a, b]`; `lib.rs` is `[]`.
fn module_path(file: &Path) -> Vec<String> {
    let mut parts: Vec<String> = file.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && !(parts.is_empty() && (stem == "lib" || stem == "main")) {
        parts.push(stem.to_string());
    }
    parts
}

/// The top-level modules each top-level module names through `crate::…` or a `super::…` that
/// climbs to the crate root. Comments are skipped; `crate::{a, b::c}` names `a` and `b`.
fn module_graph(files: &[(PathBuf, String)]) -> Graph {
    let tops: BTreeSet<String> = files.iter().filter_map(|(p, _)| module_path(p).first().cloned()).collect();
    let mut graph = Graph::new();
    for (path, text) in files {
        let here = module_path(path);
        let Some(from) = here.first() else { continue };
        let node = graph.entry(from.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for target in named_roots(code, here.len()) {
                if &target != from && tops.contains(&target) {
                    node.insert(target);
                }
            }
        }
    }
    graph
}

/// The crate-root names a line of code refers to, for a file `depth` modules deep.
fn named_roots(code: &str, depth: usize) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let at_word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if at_word_start && rest.starts_with("crate::") {
            names.extend(roots_after(&rest["crate::".len()..]));
            i += "crate::".len();
        } else if at_word_start && rest.starts_with("super::") {
            // `super::` climbs one module per occurrence; only paths that reach the root count.
            let mut after = rest;
            let mut ups = 0;
            while let Some(r) = after.strip_prefix("super::") {
                after = r;
                ups += 1;
            }
            if ups >= depth {
                names.extend(roots_after(after));
            }
            i += rest.len() - after.len();
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    names
}

/// The first segment of a path, or of each item of a `{…}` group.
fn roots_after(path: &str) -> Vec<String> {
    let ident =
        |s: &str| s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let Some(group) = path.trim_start().strip_prefix('{') else {
        return vec![ident(path)].into_iter().filter(|s| !s.is_empty()).collect();
    };
    let (mut depth, mut item_start, mut out) = (0usize, 0usize, Vec::new());
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&group[item_start..j]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&group[item_start..j]));
                item_start = j + 1;
            }
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

/// A cycle in `graph` as `[a, b, …, a]`, if there is one (depth-first search, three colours).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match marks.get(m).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = stack.iter().position(|s| s == m).expect("open nodes are on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(m, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = visit(n, graph, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}
