//! The command line grammar (clap derive): commands, flags, defaults and help text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Manage Pitwall microVMs and images through the Pitwall REST API.";

const LONG_ABOUT: &str = "\
Manage Pitwall microVMs and images through the Pitwall REST API.

The API endpoint is taken from, in this order:
  1. the --api URL flag
  2. the PITWALL_API environment variable
  3. `api = \"http://HOST:PORT\"` in the config file: $PITWALL_CONFIG, else
     $XDG_CONFIG_HOME/pitwall/config.toml, else ~/.config/pitwall/config.toml
  4. the default http://127.0.0.1:7070 (where `pitwalld all` listens by default)";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  any other error
  2  usage error (bad flags or arguments)
  3  not found (VM or image unknown to the API, or PATH missing)
  4  already exists, or conflicts with the VM's current state
  5  timed out waiting
  6  the API is unreachable
  7  the VM failed (the API said vm_failed, or the awaited VM became FAILED)
  8  invalid input refused by the API (invalid_argument, invalid_image)

Logging: PITWALL_LOG=debug (tracing filter syntax) logs to stderr.";

#[derive(Debug, Parser)]
#[command(
    name = "pitwall",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Pitwall API endpoint, e.g. http://10.0.0.5:7070 [default: PITWALL_API, then the config
    /// file, then http://127.0.0.1:7070]
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,

    /// Output format: human-readable text, or the API's JSON objects (pretty-printed)
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and `key: value` lines
    Text,
    /// The API's JSON objects, pretty-printed (lists as arrays; events as one object per line)
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect, start, stop, delete and watch VMs
    #[command(subcommand)]
    Vm(VmCommand),
    /// Import and inspect images
    #[command(subcommand)]
    Image(ImageCommand),
    /// Follow the lifecycle event stream, one line per event (Ctrl-C to stop)
    Events(EventsArgs),
    /// Check that the API answers, and list the hosts that are alive
    Health,
}

impl Command {
    /// The VM a command is about, for hints in error messages.
    pub fn vm_name(&self) -> Option<&str> {
        match self {
            Command::Vm(VmCommand::Create(a)) => Some(&a.name),
            Command::Vm(VmCommand::Start(a) | VmCommand::Stop(a) | VmCommand::Delete(a)) => {
                Some(&a.name)
            }
            Command::Vm(VmCommand::Show { name }) => Some(name),
            Command::Vm(VmCommand::Wait(a)) => Some(&a.name),
            Command::Vm(VmCommand::Console(a)) => Some(&a.name),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM from an image, and boot it unless --no-start
    Create(CreateArgs),
    /// List VMs
    List,
    /// Show one VM, including why it failed when it did
    Show {
        /// VM name
        name: String,
    },
    /// Boot a stopped VM
    Start(ActionArgs),
    /// Stop a running VM (--wait waits for STOPPED)
    Stop(ActionArgs),
    /// Delete a VM (--wait waits until it is DELETED or gone)
    Delete(ActionArgs),
    /// Wait until a VM reaches a state
    Wait(WaitArgs),
    /// Print the VM's captured serial console
    Console(ConsoleArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// VM name
    pub name: String,
    /// Image reference, e.g. demo/hello:1.0 (see `pitwall image list`)
    #[arg(long, value_name = "REF")]
    pub image: String,
    /// Virtual CPUs [default: the server's]
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Memory in MiB [default: the server's]
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Root disk in MiB [default: the server's]
    #[arg(long, value_name = "MIB")]
    pub disk: Option<u64>,
    /// Create the VM but leave it STOPPED
    #[arg(long)]
    pub no_start: bool,
    /// Wait until the VM is RUNNING (STOPPED with --no-start)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 5m
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Arguments of `vm start`, `vm stop` and `vm delete`.
#[derive(Debug, Args)]
pub struct ActionArgs {
    /// VM name
    pub name: String,
    /// Wait until the VM is RUNNING (start), STOPPED (stop) or DELETED (delete)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, e.g. 90s, 5m
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// VM name
    pub name: String,
    /// State to wait for: RUNNING, STOPPED, DELETED, FAILED, ...
    #[arg(long, default_value = "RUNNING", value_parser = parse_state)]
    pub state: String,
    /// How long to wait, e.g. 500ms, 30s, 2m, 1h
    #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// VM name
    pub name: String,
    /// Print at most the last N bytes [default: the server's]
    #[arg(long, value_name = "N")]
    pub max_bytes: Option<u32>,
    /// Keep printing new output until Ctrl-C or the VM is STOPPED, DELETED or FAILED
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload a `docker save` tar, an OCI layout tar or an OCI image layout directory
    Import(ImportArgs),
    /// List images
    List,
    /// Show one image and its config
    Show {
        /// Image reference, e.g. demo/hello:1.0
        reference: String,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A `docker save` tar, an OCI layout tar, or an OCI image layout directory
    pub path: PathBuf,
    /// Reference to store the image under, e.g. demo/hello:1.0
    #[arg(long, value_name = "NAME:TAG")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this sequence number (0: from the start of the log)
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
}

/// Parse a duration such as `500ms`, `30s`, `2m`, `1h` or `1m 30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write a duration like 500ms, 30s, 2m or 1h"))
}

/// VM states are upper case on the wire; accept any case.
fn parse_state(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err("give a VM state such as RUNNING, STOPPED, DELETED or FAILED".into());
    }
    Ok(s.to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::DEFAULT_API;
    use clap::CommandFactory;

    #[test]
    fn durations_take_the_units_people_write() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        let e = parse_duration("soon").unwrap_err();
        assert!(e.contains("like 500ms, 30s, 2m or 1h"), "{e}");
        assert!(parse_duration("10").is_err(), "a bare number has no unit");
    }

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn create_waits_two_minutes_by_default() {
        let cli =
            Cli::try_parse_from(["pitwall", "vm", "create", "web", "--image", "a:1"]).unwrap();
        let Command::Vm(VmCommand::Create(a)) = cli.command else {
            panic!("not create")
        };
        assert_eq!(a.timeout, Duration::from_secs(120));
        assert!(!a.wait && !a.no_start);
    }

    #[test]
    fn wait_defaults_to_running_within_a_minute_and_accepts_any_case() {
        let cli = Cli::try_parse_from(["pitwall", "vm", "wait", "web"]).unwrap();
        let Command::Vm(VmCommand::Wait(a)) = cli.command else {
            panic!("not wait")
        };
        assert_eq!(
            (a.state.as_str(), a.timeout),
            ("RUNNING", Duration::from_secs(60))
        );

        let cli =
            Cli::try_parse_from(["pitwall", "vm", "wait", "web", "--state", "stopped"]).unwrap();
        let Command::Vm(VmCommand::Wait(a)) = cli.command else {
            panic!("not wait")
        };
        assert_eq!(a.state, "STOPPED");
    }

    #[test]
    fn output_format_is_global_and_has_a_short_form() {
        let cli = Cli::try_parse_from(["pitwall", "vm", "list", "-o", "json"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["pitwall", "--output", "json", "health"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        let cli = Cli::try_parse_from(["pitwall", "health"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Text);
    }

    #[test]
    fn long_help_lists_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit codes:"), "{help}");
        assert!(help.contains("6  the API is unreachable"), "{help}");
        assert!(help.contains(DEFAULT_API), "{help}");
    }
}
