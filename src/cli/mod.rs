//! Command-line entry: one file per subcommand, glue only.

mod cache;
mod completions;
mod generate;
mod man;
mod mirror_access;
mod prewarm;
mod probe;
mod serve;
mod status;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "berth",
    version = crate::build_info::LONG_VERSION,
    about = "A pull-through OCI registry mirror that survives a bad upstream path"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `berth=debug`.
    #[arg(long, env = "BERTH_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mirror.
    Serve(serve::ServeArgs),
    /// Write a K3s/RKE2 registries.yaml that points every configured registry at this mirror.
    K3sRegistries(generate::K3sArgs),
    /// Write a containerd `config_path` tree (<dir>/<registry>/hosts.toml) pointing at this mirror.
    ContainerdHosts(generate::HostsArgs),
    /// Inspect and tend the disk cache: stats, verify, gc.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Pull image groups through a running berth so a rebuild needs no internet; `--check`
    /// says whether the cache alone can serve them.
    Prewarm(prewarm::PrewarmArgs),
    /// Measure the egress path to the registries (DNS, connect, TLS, first byte, bulk transfers
    /// at several MSS, path MTU) and name what breaks it; `probe compare` sets reports side by side.
    Probe(probe::ProbeArgs),
    /// Show a running berth's status: upstream health, failed pulls by image and by node,
    /// fills in progress, cache and pins.
    ///
    /// Exit status: 0 no failed pulls in the window (`--since`, else since berth started) and
    /// no upstream down; 1 the report lists failed pulls or an upstream is down (the report is
    /// printed in full all the same); 2 no report (bad flags, mirror unreachable, 401/403).
    Status(status::StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to standard output.
    Completions(completions::CompletionsArgs),
    /// Print the berth(1) man page (roff) to standard output: `berth man | man -l -`.
    Man,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::K3sRegistries(args) => generate::k3s_registries(args),
        Command::ContainerdHosts(args) => generate::containerd_hosts(args),
        Command::Cache(command) => cache::run(command),
        Command::Prewarm(args) => return prewarm::main(args),
        Command::Probe(args) => return probe::main(args),
        Command::Status(args) => return status::main(args),
        Command::Completions(args) => completions::print(args, Cli::command()),
        Command::Man => man::print(Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// One line: what went wrong and, where the message has it, the fix.
fn print_error(e: &anyhow::Error) {
    eprintln!("berth: {e:#}");
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}
