//! The `ringcast` command: settings, logs, the built-in routes, signals.

use std::process::ExitCode;

use crate::config::{self, Settings};

/// Entry point of the binary. Exit codes: 0 after a clean shutdown, 2 for a
/// bad flag or config file, 1 when the server cannot start or fails.
pub fn main() -> ExitCode {
    // Before the settings: the default max-connections follows the limit.
    config::raise_nofile();
    let settings = Settings::from_args_or_exit();
    crate::logging::init(&settings.log_level, settings.log_format);
    match crate::routes::app(settings).run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast: {e}");
            ExitCode::FAILURE
        }
    }
}
