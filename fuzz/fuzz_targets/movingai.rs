//! Moving AI maps and scenarios: the text before the first NUL is a map, after it a scenario
//! file. Scenarios that fit a small map are searched with jump point search and with the plain
//! A* baseline; both must agree on the optimal length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terrarium_systems::pathfinding::{astar_baseline, check_scenarios, jps_path, parse_map, parse_scenarios};

fuzz_target!(|data: &[u8]| {
    let (map, scen) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(map), Ok(scen)) = (std::str::from_utf8(map), std::str::from_utf8(scen)) else { return };
    let grid = parse_map(map);
    let scenarios = parse_scenarios(scen);
    let (Ok(grid), Ok(scenarios)) = (grid, scenarios) else { return };
    if check_scenarios(&grid, &scenarios).is_err()
        || u64::from(grid.width()) * u64::from(grid.height()) > 4096
    {
        return;
    }
    for s in scenarios.iter().take(4) {
        let jps = jps_path(&grid, s.start, s.goal).map(|p| p.length);
        let astar = astar_baseline(&grid, s.start, s.goal).map(|p| p.length);
        match (jps, astar) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-6, "jps {a} vs a* {b} on line {}", s.line),
            (None, None) => {}
            other => panic!("jps and a* disagree on reachability: {other:?} on line {}", s.line),
        }
    }
});
