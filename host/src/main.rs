//! The `weft` binary: a node and its command-line client.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
