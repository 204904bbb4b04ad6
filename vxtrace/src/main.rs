//! The `vxtrace` command line.

use std::process::ExitCode;

use clap::Parser;
use vxtrace::{lab, reaper, report, watch};

#[derive(Parser, Debug)]
#[command(
    name = "vxtrace",
    version,
    about = "In-kernel VXLAN overlay tracer: per-peer encapsulation, decapsulation and loss",
    long_about = None,
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Count VXLAN traffic per underlay peer and show it live.
    Watch(Box<watch::WatchArgs>),
    /// Check the overlay's kernel state (FDB, neighbours, routes, MTU,
    /// firewall, NAT, sysctls). Exit 0 clean, 1 findings, 2 could not run.
    Doctor(vxtrace::doctor::DoctorArgs),
    /// Read recordings (`watch --record`) and name the likely causes.
    Report(report::ReportArgs),
    /// A built-in VXLAN lab in network namespaces (flannel's layout, its
    /// dual-stack, Calico's, or a metadata device's).
    Lab {
        #[command(subcommand)]
        command: lab::LabCommand,
    },
    /// Internal: removes clsact filters when the watcher exits.
    #[command(hide = true)]
    ReapClsact,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    let result = match cli.command {
        Command::Watch(args) => watch::run(*args),
        Command::Doctor(args) => return ExitCode::from(vxtrace::doctor::run(args) as u8),
        Command::Report(args) => report::run(args),
        Command::Lab { command } => lab::run(command),
        Command::ReapClsact => reaper::run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong, then why, then (in the message) what to do.
            eprintln!("vxtrace: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
