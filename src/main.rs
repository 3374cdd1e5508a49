use std::process::ExitCode;

fn main() -> ExitCode {
    cardgate::cli::main()
}
