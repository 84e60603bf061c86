//! The Moving AI benchmark formats: octile maps (`type octile`, `height`, `width`, `map`, then
//! rows) and scenario files (`version 1`, then one tab-separated query per line). CRLF line ends
//! are accepted; every error names its line.

use std::path::Path;

use super::Grid2d;
use crate::error::MapError;

/// One query of a scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Difficulty bucket (the file's grouping by optimal length).
    pub bucket: u32,
    /// Map file name as written in the scenario.
    pub map: String,
    /// Map width the scenario was made for.
    pub width: u32,
    /// Map height the scenario was made for.
    pub height: u32,
    /// Start cell `(x, y)`.
    pub start: (u32, u32),
    /// Goal cell `(x, y)`.
    pub goal: (u32, u32),
    /// Length of an optimal path (cardinal steps 1, diagonal steps √2).
    pub optimal: f64,
    /// Line of the scenario in its file.
    pub line: usize,
}

/// Parses a map. `.`, `G` and `S` are passable; `@`, `O`, `T` and `W` are not.
///
/// # Errors
/// [`MapError::Header`], [`MapError::Size`], [`MapError::Cell`], [`MapError::RowLength`] or
/// [`MapError::RowCount`], with the line of the problem.
///
/// # Examples
/// ```
/// use terrarium_systems::pathfinding::parse_map;
/// let grid = parse_map("type octile\r\nheight 2\r\nwidth 3\r\nmap\r\n.@.\r\n...\r\n").unwrap();
/// assert_eq!((grid.width(), grid.height()), (3, 2));
/// assert!(grid.is_free(0, 0) && !grid.is_free(1, 0));
/// let err = parse_map("type octile\nheight 1\nwidth 2\nmap\n.x\n").unwrap_err();
/// assert_eq!(err.to_string(), "line 5, column 2: 'x' is not a terrain character");
/// ```
pub fn parse_map(text: &str) -> Result<Grid2d, MapError> {
    let mut lines = numbered_lines(text);
    let mut next = |expected: &'static str| {
        lines
            .next()
            .map_or_else(|| Err(MapError::Header { line: 0, expected, found: "end of file".into() }), Ok)
    };
    let (line, t) = next("`type octile`")?;
    if t.split_whitespace().collect::<Vec<_>>() != ["type", "octile"] {
        return Err(MapError::Header { line, expected: "`type octile`", found: t.into() });
    }
    let (hline, height) = header_number(next("`height N`")?, "height", "`height N`")?;
    let (_, width) = header_number(next("`width N`")?, "width", "`width N`")?;
    if !(1..=65_535).contains(&width) || !(1..=65_535).contains(&height) {
        return Err(MapError::Size { line: hline, width, height });
    }
    if !Grid2d::searchable(width, height) {
        return Err(MapError::TooManyCells { line: hline, width, height, max: Grid2d::MAX_PADDED_CELLS });
    }
    let (line, m) = next("`map`")?;
    if m.trim() != "map" {
        return Err(MapError::Header { line, expected: "`map`", found: m.into() });
    }
    let (w, h) = (width as usize, height as usize);
    // The header is only a claim: every cell takes at least one byte of the text, so the text
    // bounds what is reserved (a 20-byte file can't ask for gigabytes).
    let mut cells = Vec::with_capacity((w * h).min(text.len()));
    let mut rows = 0;
    let mut last_line = line;
    for (line, row) in lines {
        last_line = line;
        if rows == h {
            if row.trim().is_empty() {
                continue;
            }
            return Err(MapError::RowCount { line, expected: h, found: rows + 1 });
        }
        let mut n = 0;
        for (i, c) in row.chars().enumerate() {
            let free = match c {
                '.' | 'G' | 'S' => true,
                '@' | 'O' | 'T' | 'W' => false,
                other => return Err(MapError::Cell { line, column: i + 1, found: other }),
            };
            if n < w {
                cells.push(free);
            }
            n += 1;
        }
        if n != w {
            return Err(MapError::RowLength { line, expected: w, found: n });
        }
        rows += 1;
    }
    if rows != h {
        return Err(MapError::RowCount { line: last_line + 1, expected: h, found: rows });
    }
    Ok(Grid2d::from_cells(width as u32, height as u32, &cells))
}

/// Parses a scenario file (`version 1` or `version 1.0`; blank lines are skipped).
///
/// # Errors
/// [`MapError::Header`] for a missing version line, [`MapError::Scenario`] for a bad field.
///
/// # Examples
/// ```
/// use terrarium_systems::pathfinding::parse_scenarios;
/// let s = parse_scenarios("version 1\n0\tm.map\t3\t2\t0\t0\t2\t1\t2.41421356\n").unwrap();
/// assert_eq!((s[0].start, s[0].goal), ((0, 0), (2, 1)));
/// assert!(parse_scenarios("version 1\n0\tm.map\t3\t2\t0\t0\t2\n").is_err());
/// ```
pub fn parse_scenarios(text: &str) -> Result<Vec<Scenario>, MapError> {
    let mut lines = numbered_lines(text);
    let Some((line, v)) = lines.next() else {
        return Err(MapError::Header { line: 1, expected: "`version 1`", found: "end of file".into() });
    };
    let words: Vec<&str> = v.split_whitespace().collect();
    if words.len() != 2 || words[0] != "version" || !matches!(words[1], "1" | "1.0") {
        return Err(MapError::Header { line, expected: "`version 1`", found: v.into() });
    }
    let mut out = Vec::new();
    for (line, text) in lines {
        if text.trim().is_empty() {
            continue;
        }
        out.push(parse_scenario_line(line, text)?);
    }
    Ok(out)
}

/// Reads and parses a map file.
///
/// # Errors
/// [`MapError::Io`] when the file can't be read, otherwise as [`parse_map`].
pub fn load_map(path: impl AsRef<Path>) -> Result<Grid2d, MapError> {
    let path = path.as_ref();
    parse_map(&read(path)?).map_err(|e| in_file(path, e))
}

/// Reads and parses a scenario file.
///
/// # Errors
/// [`MapError::Io`] when the file can't be read, otherwise as [`parse_scenarios`].
pub fn load_scenarios(path: impl AsRef<Path>) -> Result<Vec<Scenario>, MapError> {
    let path = path.as_ref();
    parse_scenarios(&read(path)?).map_err(|e| in_file(path, e))
}

/// Names the file a parse error is in.
fn in_file(path: &Path, source: MapError) -> MapError {
    MapError::InFile { path: path.to_path_buf(), source: Box::new(source) }
}

/// Checks that every scenario fits `grid`: same size, both ends inside and passable.
///
/// # Errors
/// [`MapError::Mismatch`] for the first scenario that does not fit.
pub fn check_scenarios(grid: &Grid2d, scenarios: &[Scenario]) -> Result<(), MapError> {
    for s in scenarios {
        let fail = |reason: String| Err(MapError::Mismatch { line: s.line, reason });
        if (s.width, s.height) != (grid.width(), grid.height()) {
            return fail(format!(
                "made for {} x {}, map is {} x {}",
                s.width,
                s.height,
                grid.width(),
                grid.height()
            ));
        }
        for (what, (x, y)) in [("start", s.start), ("goal", s.goal)] {
            if x >= grid.width() || y >= grid.height() {
                return fail(format!("{what} ({x}, {y}) is outside the map"));
            }
            if !grid.is_free(x, y) {
                return fail(format!("{what} ({x}, {y}) is on a blocked cell"));
            }
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, MapError> {
    std::fs::read_to_string(path).map_err(|source| MapError::Io { path: path.to_path_buf(), source })
}

/// Lines with their 1-based numbers and without a trailing `\r`.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

fn header_number(
    (line, text): (usize, &str),
    key: &str,
    expected: &'static str,
) -> Result<(usize, u64), MapError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [k, n] if *k == key => {
            n.parse().map(|n| (line, n)).map_err(|_| MapError::Header { line, expected, found: text.into() })
        }
        _ => Err(MapError::Header { line, expected, found: text.into() }),
    }
}

fn parse_scenario_line(line: usize, text: &str) -> Result<Scenario, MapError> {
    let fields: Vec<&str> = text.split('\t').map(str::trim).collect();
    const NAMES: [&str; 9] =
        ["bucket", "map", "width", "height", "start x", "start y", "goal x", "goal y", "optimal length"];
    if fields.len() < NAMES.len() {
        let field = NAMES[fields.len()];
        return Err(MapError::Scenario { line, field, reason: "missing (fields are tab-separated)".into() });
    }
    // Trailing tabs (empty fields) are tolerated, anything else after the nine fields is not.
    if let Some(extra) = fields[NAMES.len()..].iter().find(|f| !f.is_empty()) {
        return Err(MapError::Scenario {
            line,
            field: NAMES[NAMES.len() - 1],
            reason: format!("unexpected field {extra:?} after it (a scenario line has nine)"),
        });
    }
    let int = |i: usize| {
        fields[i].parse::<u32>().map_err(|e| MapError::Scenario {
            line,
            field: NAMES[i],
            reason: format!("{:?} is not a whole number ({e})", fields[i]),
        })
    };
    let optimal: f64 = fields[8].parse().map_err(|e| MapError::Scenario {
        line,
        field: NAMES[8],
        reason: format!("{:?} is not a number ({e})", fields[8]),
    })?;
    if !optimal.is_finite() || optimal < 0.0 {
        return Err(MapError::Scenario {
            line,
            field: NAMES[8],
            reason: format!("{optimal} is not a length"),
        });
    }
    Ok(Scenario {
        bucket: int(0)?,
        map: fields[1].to_string(),
        width: int(2)?,
        height: int(3)?,
        start: (int(4)?, int(5)?),
        goal: (int(6)?, int(7)?),
        optimal,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "type octile\nheight 3\nwidth 4\nmap\n.G@S\nT..W\n....\n";

    #[test]
    fn parses_terrain_and_crlf() {
        let g = parse_map(MAP).unwrap();
        let crlf = parse_map(&MAP.replace('\n', "\r\n")).unwrap();
        assert_eq!(g, crlf);
        let free: Vec<bool> =
            (0..3).flat_map(|y| (0..4).map(move |x| (x, y))).map(|(x, y)| g.is_free(x, y)).collect();
        assert_eq!(free, [true, true, false, true, false, true, true, false, true, true, true, true]);
    }

    #[test]
    fn malformed_maps_name_the_line() {
        let cases: [(&str, &str); 7] = [
            ("typo octile\nheight 1\nwidth 1\nmap\n.\n", "line 1: expected `type octile`"),
            ("type octile\nheight x\nwidth 1\nmap\n.\n", "line 2: expected `height N`"),
            ("type octile\nheight 1\nwidth 1\nmop\n.\n", "line 4: expected `map`"),
            ("type octile\nheight 2\nwidth 2\nmap\n..\n.\n", "line 6: row has 1 cells, expected 2"),
            ("type octile\nheight 2\nwidth 2\nmap\n..\n..\n..\n", "line 7: map has 3 rows, expected 2"),
            ("type octile\nheight 3\nwidth 2\nmap\n..\n..\n", "line 7: map has 2 rows, expected 3"),
            ("type octile\nheight 0\nwidth 2\nmap\n", "line 2: map size 2 x 0 is out of range"),
        ];
        for (text, want) in cases {
            let err = parse_map(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: got {err:?}, want {want:?}");
        }
        assert!(matches!(parse_map("type octile\n"), Err(MapError::Header { line: 0, .. })));
    }

    #[test]
    fn sizes_a_search_cannot_number_are_refused_and_headers_reserve_nothing() {
        let err = parse_map("type octile\nheight 65535\nwidth 65535\nmap\n.\n").unwrap_err();
        assert!(
            matches!(err, MapError::TooManyCells { line: 2, width: 65_535, height: 65_535, .. }),
            "{err}"
        );
        assert!(Grid2d::searchable(65_533, 65_533) && !Grid2d::searchable(65_534, 65_534));
        // 60000 x 60000 can be searched, but a five-line file does not get 3.6 GB reserved for
        // it: it fails on its first short row.
        let err = parse_map("type octile\nheight 60000\nwidth 60000\nmap\n..\n").unwrap_err();
        assert!(matches!(err, MapError::RowLength { line: 5, expected: 60_000, found: 2 }), "{err}");
    }

    #[test]
    fn scenario_lines_with_extra_fields_are_named() {
        let ok = parse_scenarios("version 1\n0\tm\t4\t3\t0\t0\t3\t2\t3.8\t\n").unwrap();
        assert_eq!(ok.len(), 1, "a trailing tab is harmless");
        let err = parse_scenarios("version 1\n\n0\tm\t4\t3\t0\t0\t3\t2\t3.8\tx\n").unwrap_err();
        assert!(matches!(err, MapError::Scenario { line: 3, .. }), "{err}");
        assert!(err.to_string().starts_with("line 3:"), "{err}");
        for (bad, field) in
            [("0\tm\t4\t3\t0\t0\t3\t2\tNaN", "optimal length"), ("x\tm\t4\t3\t0\t0\t3\t2\t1", "bucket")]
        {
            let err = parse_scenarios(&format!("version 1\n{bad}\n")).unwrap_err();
            assert!(matches!(err, MapError::Scenario { line: 2, field: f, .. } if f == field), "{err}");
        }
    }

    #[test]
    fn scenarios_parse_and_malformed_lines_are_named() {
        let text = "version 1\r\n0\tm.map\t4\t3\t0\t0\t3\t2\t3.82842712\r\n\r\n1\tm.map\t4\t3\t1\t1\t3\t0\t2.41421356\r\n";
        let s = parse_scenarios(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[1],
            Scenario {
                bucket: 1,
                map: "m.map".into(),
                width: 4,
                height: 3,
                start: (1, 1),
                goal: (3, 0),
                optimal: 2.41421356,
                line: 4,
            }
        );
        let err = parse_scenarios("version 1\n0\tm.map\t4\t3\t0\tzero\t3\t2\t1\n").unwrap_err();
        assert!(matches!(err, MapError::Scenario { line: 2, field: "start y", .. }), "{err}");
        let err = parse_scenarios("version 2\n").unwrap_err();
        assert!(matches!(err, MapError::Header { line: 1, .. }));
        let err = parse_scenarios("version 1\n0\tm.map\t4\t3\t0\t0\t3\t2\t-1\n").unwrap_err();
        assert!(matches!(err, MapError::Scenario { field: "optimal length", .. }));
    }

    #[test]
    fn scenarios_are_checked_against_their_map() {
        let g = parse_map(MAP).unwrap();
        let ok = parse_scenarios("version 1\n0\tm\t4\t3\t0\t0\t3\t2\t3.8\n").unwrap();
        check_scenarios(&g, &ok).unwrap();
        for (line, want) in [
            ("0\tm\t5\t3\t0\t0\t3\t2\t1", "made for 5 x 3"),
            ("0\tm\t4\t3\t2\t0\t3\t2\t1", "start (2, 0) is on a blocked cell"),
            ("0\tm\t4\t3\t0\t0\t4\t2\t1", "goal (4, 2) is outside"),
        ] {
            let s = parse_scenarios(&format!("version 1\n{line}\n")).unwrap();
            let err = check_scenarios(&g, &s).unwrap_err().to_string();
            assert!(err.contains(want) && err.starts_with("line 2"), "{err}");
        }
    }

    #[test]
    fn missing_files_are_io_errors_with_the_path() {
        let err = load_map("/nonexistent/x.map").unwrap_err();
        assert!(matches!(&err, MapError::Io { path, .. } if path.ends_with("x.map")), "{err}");
    }
}
