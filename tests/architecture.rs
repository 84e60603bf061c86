//! Keeps ARCHITECTURE.md honest: every workspace member and every top-level directory must be
//! named in its codemap, and every file or directory it names must exist.

use std::path::Path;

fn codemap() -> String {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md exists at the root");
    let start = text.find("## Codemap").expect("a Codemap section");
    let end = text[start + 1..].find("\n## ").map_or(text.len(), |i| start + 1 + i);
    text[start..end].to_string()
}

#[test]
fn every_workspace_member_is_in_the_codemap() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let members: toml::Table = manifest.parse().unwrap();
    let map = codemap();
    let list = members["workspace"]["members"].as_array().unwrap();
    for m in list.iter().map(|m| m.as_str().unwrap()).filter(|m| *m != ".") {
        assert!(map.contains(&format!("`{m}/`")), "workspace member {m} is missing from the codemap");
    }
}

#[test]
fn every_top_level_directory_is_in_the_codemap() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = codemap();
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if !entry.file_type().unwrap().is_dir() || name.starts_with('.') || name == "target" {
            continue;
        }
        assert!(
            map.contains(&format!("`{name}/`")),
            "top-level directory {name}/ is missing from the codemap"
        );
    }
}

/// The codemap's paragraphs, each with the directory it is about (`**`dir/`**` at its start).
fn paragraphs(map: &str) -> Vec<(String, String)> {
    map.split("\n\n")
        .filter_map(|p| {
            let rest = p.trim_start().strip_prefix("**`")?;
            let dir = &rest[..rest.find('`')?];
            Some((dir.trim_end_matches('/').to_string(), p.to_string()))
        })
        .collect()
}

/// Every backticked name in `text` that looks like a file or a directory: `a/b.rs`, `x.rs`,
/// `dir/`, `migrations/*.sql`.
fn named_paths(text: &str) -> Vec<String> {
    const EXTENSIONS: [&str; 7] = [".rs", ".md", ".toml", ".sql", ".sh", ".csv", ".png"];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| !t.contains(' ') && !t.contains("::") && !t.is_empty())
        .filter(|t| t.ends_with('/') || EXTENSIONS.iter().any(|e| t.ends_with(e)))
        .map(str::to_string)
        .collect()
}

/// Whether `name` exists below `dir`, as a path relative to `dir` or to any directory below
/// it. `name` may hold one `{a,b}` alternative (every one must exist) and a `*` in its file
/// name.
fn exists_below(dir: &Path, name: &str) -> bool {
    let name = name.trim_end_matches('/');
    if let (Some(open), Some(close)) = (name.find('{'), name.find('}')) {
        return name[open + 1..close]
            .split(',')
            .all(|alt| exists_below(dir, &format!("{}{alt}{}", &name[..open], &name[close + 1..])));
    }
    let here = match name.rsplit_once("/*") {
        Some((parent, suffix)) => std::fs::read_dir(dir.join(parent)).is_ok_and(|entries| {
            entries.flatten().any(|e| e.file_name().to_string_lossy().ends_with(suffix))
        }),
        None => dir.join(name).exists(),
    };
    here || std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let hidden = e.file_name().to_string_lossy().starts_with('.') || e.file_name() == "target";
            !hidden && e.path().is_dir() && exists_below(&e.path(), name)
        })
    })
}

/// A stale map misleads: every file or directory ARCHITECTURE.md names must exist, looked up in
/// the crate or directory whose codemap paragraph names it (or from the root).
#[test]
fn every_path_the_architecture_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    for (dir, paragraph) in paragraphs(&codemap()) {
        let base = if dir.is_empty() { root.to_path_buf() } else { root.join(&dir) };
        for name in named_paths(&paragraph) {
            if !exists_below(&base, &name) && !exists_below(root, &name) {
                missing.push(format!("{name} (in the {dir}/ paragraph)"));
            }
        }
    }
    for name in named_paths(&text) {
        if name.contains('/') && !name.starts_with("../") && !exists_below(root, &name) {
            missing.push(name);
        }
    }
    missing.dedup();
    assert!(missing.is_empty(), "ARCHITECTURE.md names paths that do not exist: {missing:?}");
}

#[test]
fn the_path_check_catches_a_missing_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(exists_below(&root.join("persistence"), "breaker.rs"));
    assert!(exists_below(root, "persistence/src/postgres/migrations/*.sql"));
    assert!(exists_below(root, "persistence/tests/{postgres,redis}.rs"));
    assert!(!exists_below(root, "persistence/tests/{postgres,no_such_test}.rs"));
    assert!(!exists_below(&root.join("persistence"), "no_such_file.rs"));
    assert_eq!(named_paths("see `a/b.rs`, `Foo`, `x.rs` and `dir/`"), ["a/b.rs", "x.rs", "dir/"]);
}
