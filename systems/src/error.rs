//! The systems crate's error types, one per boundary.

use std::path::PathBuf;

/// A Moving AI map or scenario file could not be read or is malformed. Line numbers count from 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Parsing a file failed: which file, and the error within it.
    #[error("in {path}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong in it (with its line number).
        #[source]
        source: Box<MapError>,
    },
    /// A header line is missing or wrong (`type octile`, `height N`, `width N`, `map`; `version 1`
    /// for scenarios).
    #[error("line {line}: expected {expected}, found {found:?}")]
    Header {
        /// Line of the problem.
        line: usize,
        /// What the format wants there.
        expected: &'static str,
        /// What the line holds.
        found: String,
    },
    /// The map is larger than this build handles (each side at most 1 ..= 65 535 cells).
    #[error("line {line}: map size {width} x {height} is out of range (1 ..= 65535 per side)")]
    Size {
        /// Line of the header that set the size.
        line: usize,
        /// Width read.
        width: u64,
        /// Height read.
        height: u64,
    },
    /// The map is within the per-side range but has more cells than a search can number: node
    /// ids are `u32` over the grid with its one-cell border, so `(width + 2) × (height + 2)`
    /// must stay below [`crate::pathfinding::Grid2d::MAX_PADDED_CELLS`].
    #[error(
        "line {line}: map size {width} x {height} has too many cells to search ((width + 2) x (height + 2) must be below {max})"
    )]
    TooManyCells {
        /// Line of the header that set the size.
        line: usize,
        /// Width read.
        width: u64,
        /// Height read.
        height: u64,
        /// [`crate::pathfinding::Grid2d::MAX_PADDED_CELLS`].
        max: u64,
    },
    /// A map row holds a character that is no terrain (`.`, `G`, `S`, `@`, `O`, `T`, `W`).
    #[error("line {line}, column {column}: {found:?} is not a terrain character")]
    Cell {
        /// Line of the row.
        line: usize,
        /// Column, counting from 1.
        column: usize,
        /// The character.
        found: char,
    },
    /// A map row is shorter or longer than `width`.
    #[error("line {line}: row has {found} cells, expected {expected}")]
    RowLength {
        /// Line of the row.
        line: usize,
        /// `width`.
        expected: usize,
        /// Cells on the line.
        found: usize,
    },
    /// The map has fewer or more rows than `height`.
    #[error("line {line}: map has {found} rows, expected {expected}")]
    RowCount {
        /// Line where the rows ended (or the first extra row).
        line: usize,
        /// `height`.
        expected: usize,
        /// Rows found.
        found: usize,
    },
    /// A scenario line has a missing or unreadable field.
    #[error("line {line}: scenario field {field}: {reason}")]
    Scenario {
        /// Line of the scenario.
        line: usize,
        /// Name of the field (`bucket`, `start x`, `optimal length`, …).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A scenario does not fit its map: other dimensions, or an end point outside or on a
    /// blocked cell.
    #[error("line {line}: scenario does not fit the map: {reason}")]
    Mismatch {
        /// Line of the scenario.
        line: usize,
        /// What does not fit.
        reason: String,
    },
}
