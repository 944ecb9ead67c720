//! The `portcullis` command: `run` serves a configuration, `validate` checks one, `new`
//! writes a plugin project, `audit verify` checks an audit file's hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc with background purging instead of glibc's malloc: compiling and configuring the
/// plugins at start and on every reload frees tens of MiB that glibc keeps (idle RSS with the
/// quickstart 116 MiB, 54 MiB after a `malloc_trim`), while jemalloc's background thread returns
/// freed pages to the system within its decay time (10 s). docs/BENCHMARKS.md has the numbers.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Portcullis, a programmable API gateway with WebAssembly policy plugins.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration until SIGINT or SIGTERM.
    Run {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Log format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a configuration, its plugins and their step configurations, like `nginx -t`.
    /// Exits 0 when valid; otherwise prints one line per problem (file: field: reason) and
    /// exits 1.
    Validate {
        /// The configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a new plugin project: source with a small working policy, build file, README and
    /// a configuration snippet, for one kind in one language.
    New {
        /// The plugin kind: auth, rate-limit, validation, logging or filter.
        #[arg(value_parser = parse_kind)]
        kind: portcullis::config::PluginKind,
        /// The language.
        #[arg(long, value_enum, default_value_t = NewLang::Rust)]
        lang: NewLang,
        /// The project directory (created; must not exist or be empty); its name is the
        /// plugin's.
        dir: PathBuf,
        /// The SDK's directory, for Rust projects (default: this checkout's `sdk/`).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit file written by the `audit` capability. Exits 0 and
    /// prints the record count and last hash when intact; otherwise prints the first broken
    /// record (`FILE: record N (line L): reason`) and exits 1.
    Verify {
        /// The audit file (JSON Lines).
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NewLang {
    Rust,
    Js,
    Python,
}

fn parse_kind(text: &str) -> Result<portcullis::config::PluginKind, String> {
    use portcullis::config::PluginKind;
    [PluginKind::Auth, PluginKind::RateLimit, PluginKind::Validation, PluginKind::Logging, PluginKind::Filter]
        .into_iter()
        .find(|k| k.to_string() == text)
        .ok_or_else(|| "expected one of auth, rate-limit, validation, logging, filter".to_owned())
}

fn scaffold(
    kind: portcullis::config::PluginKind,
    lang: NewLang,
    dir: &std::path::Path,
    sdk: Option<PathBuf>,
) -> ExitCode {
    use portcullis::scaffold::{self, Lang};
    let lang = match lang {
        NewLang::Rust => Lang::Rust,
        NewLang::Js => Lang::Js,
        NewLang::Python => Lang::Python,
    };
    let sdk = sdk.unwrap_or_else(scaffold::default_sdk_path);
    match scaffold::generate(kind, lang, dir, &sdk) {
        Ok(files) => {
            for file in files {
                println!("{}", dir.join(file).display());
            }
            println!("a {kind} plugin project: see {}", dir.join("README.md").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis new: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Run { config, log_format } => {
            init_tracing(log_format);
            runtime.block_on(async {
                match portcullis::Gateway::start(&config).await {
                    Ok(gateway) => {
                        gateway.run_until_signal().await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Validate { config } => {
            init_tracing(LogFormat::Text);
            runtime.block_on(validate(&config))
        }
        Command::Audit { command: AuditCommand::Verify { file } } => verify_audit(&file),
        Command::New { kind, lang, dir, sdk } => scaffold(kind, lang, &dir, sdk),
    }
}

fn verify_audit(file: &std::path::Path) -> ExitCode {
    let opened = std::fs::File::open(file).map(std::io::BufReader::new);
    match opened.and_then(portcullis::plugin::audit::verify) {
        Ok(Ok((records, last))) => {
            println!("{}: intact, {records} records, last hash {last}", file.display());
            ExitCode::SUCCESS
        }
        Ok(Err(broken)) => {
            println!("{}: {broken}", file.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

async fn validate(file: &std::path::Path) -> ExitCode {
    let result = async {
        let loaded = portcullis::config::load(file)?;
        let engine = portcullis::plugin::PluginEngine::new(&loaded.config.runtime)
            .map_err(|e| anyhow::anyhow!("cannot create the plugin engine: {e:#}"))?;
        let snapshot = portcullis::snapshot::Snapshot::build(&loaded, &engine).await?;
        anyhow::Ok((loaded.config.routes.len(), snapshot.plugins.len()))
    };
    match result.await {
        Ok((routes, plugins)) => {
            println!("{}: configuration is valid ({routes} routes, {plugins} plugins)", file.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
