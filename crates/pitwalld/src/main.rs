//! `pitwalld`: parse arguments and configuration, start tracing, run a role.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pitwalld", version, about = "The Pitwall daemon")]
struct Cli {
    /// TOML configuration file (PITWALL_* variables and flags override it).
    #[arg(long, global = true, env = "PITWALL_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Control plane and host in one process: SQLite store, in-process bus.
    All {
        /// State directory (database, images, VM disks).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Address of the REST API.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Guest kernel management.
    Kernel {
        #[command(subcommand)]
        cmd: KernelCmd,
    },
}

#[derive(Subcommand)]
enum KernelCmd {
    /// Download Debian's cloud kernel (linux-image-cloud-amd64) into the cache, once per version.
    Provision {
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PITWALL_LOG")
                .unwrap_or_else(|_| "info,tower_http=warn,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pitwalld: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = pitwalld::config::load(cli.config.as_deref(), &pitwalld::env_map())?;
    match cli.role {
        Role::All { data_dir, listen } => {
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if let Some(l) = listen {
                cfg.listen = l;
            }
            tokio::runtime::Runtime::new()?.block_on(pitwalld::run_all(cfg))
        }
        Role::Kernel {
            cmd: KernelCmd::Provision { cache_dir },
        } => {
            let cache = cache_dir.unwrap_or(cfg.host.cache_dir);
            let k = pitwall_vmm::kernel::provision(&cache)?;
            println!("guest kernel {} at {}", k.version, k.vmlinuz.display());
            Ok(())
        }
    }
}
