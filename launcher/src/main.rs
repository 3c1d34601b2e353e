//! `ranks`: the launcher. `ranks run -n 4 prog args` starts 4 ranked copies of `prog`.

#[macro_use]
mod output;
mod agent;
mod job;
mod node;
mod remote;

pub(crate) use ranks_launcher::{diagnose, hosts, jobstate, proto, slurm, trace};

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes: usage error (2), `--timeout` (124), a host lost (255).
pub use ranks_launcher::jobstate::{EXIT_HOST_LOST, EXIT_TIMEOUT, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(name = "ranks", version, about = "Run ranked message-passing jobs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start N copies of PROGRAM, each with its own rank, and wait for them.
    Run(Box<RunArgs>),
    /// Summarise a trace written by `ranks run --trace FILE`: time in communication per
    /// rank, traffic per pair, the slowest calls; and draw the traffic as a heatmap (SVG).
    Report {
        /// The trace (JSON).
        file: std::path::PathBuf,
        /// Where to write the heatmap (default: FILE with the extension `.svg`).
        #[arg(long, value_name = "OUT")]
        svg: Option<std::path::PathBuf>,
    },
    /// Run one host's share of a job (started by `ranks run` over ssh; speaks on stdin and
    /// stdout).
    #[command(hide = true)]
    Agent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// Shared memory between ranks of one host, QUIC between hosts.
    Auto,
    /// Shared-memory rings (the fastest on one host).
    Shm,
    /// Unix-domain sockets.
    Uds,
    /// QUIC over UDP with per-job credentials (what ranks on different hosts use; on one
    /// host, for testing and measuring).
    Quic,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Auto => "auto",
            TransportKind::Shm => "shm",
            TransportKind::Uds => "uds",
            TransportKind::Quic => "quic",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Always,
    Never,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Number of ranks to start (inside a Slurm allocation, default: one per slot).
    #[arg(short = 'n', long = "np", value_name = "N")]
    pub np: Option<usize>,

    /// Prefix every output line with the rank that printed it: `[3] ...`.
    #[arg(long)]
    pub tag_output: bool,

    /// Stop the job after SECS seconds, naming the ranks still running (exit code 124).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,

    /// Pass an environment variable to every rank: `-x NAME=VALUE`, or `-x NAME` to pass
    /// the launcher's own value. May be repeated.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    pub env: Vec<String>,

    /// Keep the job running when a rank fails (the exit code still reports the failure).
    #[arg(long)]
    pub keep_going: bool,

    /// How ranks talk to each other.
    #[arg(long, value_enum, default_value = "auto")]
    pub transport: TransportKind,

    /// Run on these hosts: `a:4,b:4` (a host without a count takes one rank). Hosts other
    /// than this one are reached with ssh.
    #[arg(long, value_name = "HOST[:SLOTS],...")]
    pub host: Option<String>,

    /// Read the hosts from FILE: lines `host slots=N` (`#` comments, blank lines).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<std::path::PathBuf>,

    /// Place ranks by slot (fill a host, then the next) or by node (one per host in turn).
    #[arg(long, value_enum, default_value = "slot")]
    pub map_by: hosts::MapBy,

    /// The command that reaches other hosts, with its options (default: ssh).
    #[arg(long, value_name = "CMD")]
    pub ssh: Option<String>,

    /// Path of `ranks` on the other hosts (default: this launcher's own path).
    #[arg(long, value_name = "PATH")]
    pub agent: Option<String>,

    /// Address QUIC binds to: an IP address, or a network (`10.1.0.0/16`) in which each
    /// host uses its own address. Default: the address ssh reached the host at.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<String>,

    /// Bind QUIC to this network interface's IPv4 address on every host.
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,

    /// Ports QUIC may use, for firewalls: `LOW-HIGH`.
    #[arg(long, value_name = "LOW-HIGH")]
    pub ports: Option<String>,

    /// Draw the progress of `Pool::map` and `imap` on this terminal: auto (when stderr is a
    /// terminal), always (as plain lines when it is not), never.
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub progress: Progress,

    /// Record every rank's calls (sends, receives, waits, collectives, primitives) and write
    /// them to FILE as one Chrome/Perfetto trace; `ranks report FILE` summarises it.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,

    /// The program to run (a path, or a name looked up on PATH), then its arguments.
    /// Everything after PROGRAM is the program's, as with mpirun: `ranks run -n 4 ./sim
    /// --timeout 30` passes `--timeout 30` to `sim`.
    #[arg(
        value_name = "PROGRAM [ARGS]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<OsString>,
}

impl RunArgs {
    /// The program to run.
    pub fn program(&self) -> &OsString {
        &self.command[0]
    }

    /// The arguments every copy of the program gets.
    pub fn args(&self) -> &[OsString] {
        &self.command[1..]
    }
}

/// mpirun spells the rank count `-np`: accept it (as `--np`) among the launcher's own
/// options, that is, before the program. Clap cannot: its short options are one letter.
fn mpirun_spellings(argv: Vec<OsString>) -> Vec<OsString> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let Some(run) = cmd.find_subcommand("run") else {
        return argv;
    };
    let takes_value = |tok: &str| {
        run.get_arguments().any(|a| {
            a.get_action().takes_values()
                && (a.get_long().is_some_and(|l| tok == format!("--{l}"))
                    || a.get_short().is_some_and(|s| tok == format!("-{s}")))
        })
    };
    let mut out = Vec::with_capacity(argv.len());
    let mut it = argv.into_iter();
    out.extend(it.next()); // our own name
    let mut in_run = false;
    let mut value_next = false;
    for tok in it.by_ref() {
        let s = tok.to_str().unwrap_or("");
        if !in_run {
            in_run = s == "run";
            out.push(tok);
            if in_run {
                continue;
            }
            break;
        }
        if value_next {
            value_next = false;
        } else if s == "-np" {
            out.push("--np".into());
            value_next = true;
            continue;
        } else if !s.starts_with('-') || s == "--" {
            out.push(tok);
            break; // the program: the rest is its own
        } else {
            value_next = !s.contains('=') && takes_value(s);
        }
        out.push(tok);
    }
    out.extend(it);
    out
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(mpirun_spellings(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::from(
                    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                        EXIT_USAGE
                    } else {
                        0
                    },
                );
            }
            // Clap's whole message: what is wrong, a suggestion for a misspelt option, the
            // usage line.
            let text = e.render().to_string();
            output::say_line(&format!("ranks: {}", text.trim()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match cli.cmd {
        Cmd::Run(args) if args.np.is_none() && !in_slurm_allocation(&args) => {
            // Required unless Slurm says how many: clap's own error, with the usage line.
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            cmd.build(); // names the subcommand `ranks run` in the usage line
            let text = cmd
                .find_subcommand_mut("run")
                .map(|run| {
                    run.error(
                        clap::error::ErrorKind::MissingRequiredArgument,
                        "the following required argument was not provided: --np <N> (-n N; \
                         inside a Slurm allocation it defaults to one rank per slot)",
                    )
                    .render()
                    .to_string()
                })
                .unwrap_or_default();
            output::say_line(&format!("ranks: {}", text.trim()));
            ExitCode::from(EXIT_USAGE)
        }
        Cmd::Run(args) => match job::run(*args) {
            Ok(code) => ExitCode::from(code),
            Err(msg) => {
                crate::say!("ranks: error: {msg}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Cmd::Report { file, svg } => match report(&file, svg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                crate::say!("ranks report: {msg}");
                ExitCode::from(1)
            }
        },
        Cmd::Agent => ExitCode::from(agent::main()),
    }
}

/// Whether `ranks run` with these arguments runs on a Slurm allocation (no hosts given, and
/// Slurm's job variables set).
fn in_slurm_allocation(args: &RunArgs) -> bool {
    // A malformed allocation counts too: running the job then says what is wrong with it.
    !matches!(job::allocation(args), Ok(None))
}

/// `ranks report FILE`: print the summary, write the heatmap.
fn report(file: &std::path::Path, svg: Option<std::path::PathBuf>) -> Result<(), String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    let r = trace::report(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let svg = svg.unwrap_or_else(|| file.with_extension("svg"));
    std::fs::write(&svg, r.heatmap_svg()).map_err(|e| format!("writing {}: {e}", svg.display()))?;
    print!("{}", r.text());
    println!("\nHeatmap of the traffic: {}", svg.display());
    Ok(())
}
