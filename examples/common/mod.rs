//! What the benchmark examples share: parsing flags and turning the outcome into an exit code
//! (0 done, 1 failed with the cause chain on stderr, 2 bad flags), like `headless`.

use std::process::ExitCode;

/// Parses `A` from the command line and runs `run` with it.
pub fn main_with<A: clap::Parser>(name: &str, run: impl FnOnce(&A) -> anyhow::Result<()>) -> ExitCode {
    let args = match A::try_parse() {
        Ok(a) => a,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!(
                "{name}: {}",
                msg.lines().next().unwrap_or("bad arguments").trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
