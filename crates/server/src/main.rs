//! `ringcast`: the WebSocket event server. See `ringcast --help` and docs/server.md.

fn main() -> std::process::ExitCode {
    ringcast::cli::main()
}
