//! The `ward` command: argument parsing and orchestration only. The work happens in the
//! `policy` (file → model), `nft` (model → kernel), `dns` (the proxy), `engine` (the
//! userspace data plane) and `testlab` (namespace lab) crates.

mod commands;
mod lab;
mod run;
mod safe;
mod userspace;

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{signal, SigHandler, Signal};
use std::path::PathBuf;
use std::process::ExitCode;

// A 100k-rule policy makes millions of small allocations (YAML nodes, model, compiled table);
// glibc's allocator spent about a fifth of `ward check`'s time in them, mimalloc much less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns freed heap pages to the system now rather than after mimalloc's purge delay, so that
/// memory ward no longer needs is not counted again while libnftables works.
pub fn release_freed_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees what is already unused.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "ward",
    version,
    about = "A Linux firewall and NAT gateway driven by one policy file"
)]
struct Cli {
    /// Name of the one nftables table ward owns (family inet).
    #[arg(long, global = true, default_value = "ward")]
    table: String,
    /// Where snapshots, pending confirmations and the audit log are kept.
    #[arg(long, global = true, env = "WARD_STATE_DIR", default_value = safe::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a policy; warnings for rules that can never match
    Check {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
    },
    /// Print the nftables table the policy compiles to
    Compile {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value = "nft")]
        format: OutputFormat,
    },
    /// Show the difference between the live table and the policy
    Plan {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
        #[arg(long)]
        netns: Option<String>,
    },
    /// Check, snapshot the live table, then atomically replace it with the policy
    Apply {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
        #[arg(long)]
        netns: Option<String>,
        /// Restore the snapshot unless `ward confirm` runs within this many seconds
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        confirm_within: Option<u64>,
    },
    /// Keep the policy applied with --confirm-within: call off the automatic revert
    Confirm {
        #[arg(long)]
        netns: Option<String>,
    },
    /// Restore the table as it was before the last apply
    Rollback {
        #[arg(long)]
        netns: Option<String>,
    },
    /// Started by `apply --confirm-within`: restores the snapshot at the deadline unless
    /// the apply was confirmed
    #[command(hide = true)]
    RevertTimer {
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        token: String,
        /// Seconds since the Unix epoch.
        #[arg(long)]
        deadline: u64,
    },
    /// Apply the policy, then serve its DNS proxy until stopped (the policy stays enforced)
    Run {
        #[arg(default_value = "rules.yaml")]
        file: PathBuf,
        #[arg(long)]
        netns: Option<String>,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9580); off by default
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Write one ECS JSON event per logged packet to FILE ("-" for stdout)
        #[arg(long, value_name = "FILE")]
        log: Option<PathBuf>,
    },
    /// Enforce the policy with ward's own data plane, forwarding raw frames between a LAN and
    /// a WAN interface (AF_PACKET); SIGHUP reloads FILE (connections carry on), SIGTERM stops
    /// and prints its counters (served meanwhile as Prometheus metrics with --metrics)
    Engine(userspace::EngineArgs),
    /// Delete ward's table (and nothing else)
    Remove {
        #[arg(long)]
        netns: Option<String>,
    },
    /// What is installed: policy hash, time applied, per-rule counters
    Status {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        netns: Option<String>,
    },
    /// Which rule decides a packet, and why
    Explain(commands::ExplainArgs),
    /// Print shell completions or the man page, generated from this command line
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
    /// A LAN / firewall / WAN lab in network namespaces
    Lab {
        #[command(subcommand)]
        action: LabAction,
        #[command(flatten)]
        names: lab::LabNames,
    },
}

#[derive(Subcommand)]
enum Generated {
    /// Completions for SHELL (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Man pages (roff) for ward and each of its commands, written into DIR
    Man { dir: PathBuf },
}

/// Writes what `ward generate` asks for to stdout.
fn generate(what: Generated) -> commands::Result {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut out = std::io::stdout();
    match what {
        Generated::Completions { shell } => {
            clap_complete::generate(shell, &mut cmd, "ward", &mut out);
            Ok(())
        }
        Generated::Man { dir } => clap_mangen::generate_to(cmd, &dir).map_err(|e| {
            commands::Failure(format!(
                "error: cannot write man pages into {}: {e}",
                dir.display()
            ))
        }),
    }
}

#[derive(Subcommand)]
enum LabAction {
    /// Create the namespaces and apply examples/lab.yaml in the firewall
    Up,
    /// Remove the lab's namespaces
    Down,
    /// Up, run the probes and print what each one saw, then down
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Nft,
    Json,
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`ward status | head`), as command-line tools do.
    // SAFETY: restoring the default disposition installs no handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    let cli = Cli::parse();
    let t = &cli.table;
    let result = match cli.cmd {
        Cmd::Check { file } => commands::check(&file),
        Cmd::Compile { file, format } => {
            commands::compile(&file, t, matches!(format, OutputFormat::Json))
        }
        Cmd::Plan { file, netns } => commands::plan(&file, t, netns.as_deref()),
        Cmd::Apply {
            file,
            netns,
            confirm_within,
        } => commands::apply(
            &file,
            t,
            netns.as_deref(),
            &commands::Safety {
                state_dir: &cli.state_dir,
                confirm_within,
            },
        ),
        Cmd::Confirm { netns } => commands::confirm(t, netns.as_deref(), &cli.state_dir),
        Cmd::Rollback { netns } => commands::rollback(t, netns.as_deref(), &cli.state_dir),
        Cmd::RevertTimer {
            netns,
            token,
            deadline,
        } => commands::revert_timer(t, netns.as_deref(), &cli.state_dir, &token, deadline),
        Cmd::Run {
            file,
            netns,
            metrics,
            log,
        } => run::run(&run::Options {
            file: &file,
            table: t,
            netns: netns.as_deref(),
            state_dir: &cli.state_dir,
            metrics,
            log: log.as_deref(),
        }),
        Cmd::Engine(args) => userspace::run(&args),
        Cmd::Remove { netns } => commands::remove(t, netns.as_deref()),
        Cmd::Status { json, netns } => commands::status(t, json, netns.as_deref(), &cli.state_dir),
        Cmd::Explain(args) => commands::explain(&args),
        Cmd::Generate { what } => generate(what),
        Cmd::Lab { action, names } => match action {
            LabAction::Up => lab::up(&names, t),
            LabAction::Down => lab::down(&names),
            LabAction::Demo => lab::demo(&names, t),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
