//! Keeps ARCHITECTURE.md honest: every workspace member and every top-level directory must be
//! named in its codemap.

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
