//! Jump point search on real Moving AI benchmarks: every path has the scenario's optimal length
//! (within 1e-3) and is legal step by step.
//!
//! The two maps in `assets/maps/` always run, every scenario. The full benchmark set in
//! `../shared/movingai/` (or the directory named by `TERRARIUM_MOVINGAI_DIR`) runs when present:
//! every 4th scenario of every map, plus every scenario of `arena2`. When it is absent the test
//! prints a note and checks the bundled maps only, except in CI (`CI` set), where a missing set
//! fails the test.

use std::path::{Path, PathBuf};

use terrarium_systems::pathfinding::{Scenario, check_scenarios, jps_path, load_map, load_scenarios};

const TOLERANCE: f64 = 1e-3;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("systems/ sits in the workspace").to_path_buf()
}

/// The shared benchmark directory, if this checkout can see one.
fn shared_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TERRARIUM_MOVINGAI_DIR") {
        return Some(PathBuf::from(dir));
    }
    let root = repo_root();
    // A worktree of the main checkout sits one level deeper than the main checkout itself.
    [root.join("../shared/movingai"), root.join("../../shared/movingai"), root.join("shared/movingai")]
        .into_iter()
        .find(|d| d.is_dir())
}

/// Runs every `every`-th scenario of `map`; returns how many ran.
fn check_map(map: &Path, every: usize) -> usize {
    let grid = load_map(map).unwrap_or_else(|e| panic!("{}: {e}", map.display()));
    let scen = PathBuf::from(format!("{}.scen", map.display()));
    let scenarios = load_scenarios(&scen).unwrap_or_else(|e| panic!("{}: {e}", scen.display()));
    check_scenarios(&grid, &scenarios).unwrap();
    let picked: Vec<&Scenario> = scenarios.iter().step_by(every).collect();
    for s in &picked {
        let path = jps_path(&grid, s.start, s.goal)
            .unwrap_or_else(|| panic!("{} line {}: no path found", map.display(), s.line));
        assert!(
            (path.length - s.optimal).abs() <= TOLERANCE,
            "{} line {}: length {} but optimal is {}",
            map.display(),
            s.line,
            path.length,
            s.optimal
        );
        let walked = path
            .validate(&grid)
            .unwrap_or_else(|i| panic!("{} line {}: illegal step {i}", map.display(), s.line));
        assert!((walked - path.length).abs() <= TOLERANCE);
        assert_eq!((path.cells[0], *path.cells.last().unwrap()), (s.start, s.goal));
    }
    picked.len()
}

#[test]
fn bundled_maps_every_scenario_is_optimal() {
    let dir = repo_root().join("assets/maps");
    let mut total = 0;
    for name in ["arena2.map", "Berlin_0_256.map"] {
        total += check_map(&dir.join(name), 1);
    }
    assert!(total > 1_800, "only {total} scenarios ran");
}

#[test]
fn shared_benchmark_maps_are_solved_optimally() {
    let Some(dir) = shared_dir() else {
        // CI must never pass by skipping: there the set is part of the environment.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no ../shared/movingai was found: CI runs the full Moving AI set \
             (put it there or set TERRARIUM_MOVINGAI_DIR)"
        );
        eprintln!(
            "skipping: no ../shared/movingai (set TERRARIUM_MOVINGAI_DIR to run the full benchmark set)"
        );
        return;
    };
    let mut maps: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "map")
                && PathBuf::from(format!("{}.scen", p.display())).exists()
        })
        .collect();
    maps.sort();
    assert!(!maps.is_empty(), "{} holds no .map with a .map.scen", dir.display());
    let mut total = 0;
    for map in &maps {
        let whole = map.file_name().is_some_and(|n| n == "arena2.map");
        total += check_map(map, if whole { 1 } else { 4 });
    }
    eprintln!("{total} scenarios over {} maps in {}", maps.len(), dir.display());
    assert!(total > 1_000, "only {total} scenarios of the shared set ran");
}
