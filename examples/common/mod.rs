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
    init_logging();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (stdout carries results, and with `--json` the summary is its last line), in
/// colour only when stderr is a terminal; `RUST_LOG` chooses what is shown (default: warnings
/// and errors; `RUST_LOG=terrarium=info` adds the storage notices).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    // A second call (an example that also logs before main_with) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The default log filter when `RUST_LOG` is unset.
pub const DEFAULT_LOG: &str = "warn";
