//! The `portcullis` command: `run` serves a configuration, `validate` checks one, `new`
//! writes a plugin project, `audit verify` checks an audit file's hash chain and signed
//! checkpoints, `audit keygen` writes an Ed25519 key pair (for checkpoints and plugins alike),
//! `plugin sign` and `plugin verify` sign components and check them as the gateway does.

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
    /// Plugin file tools: signing for `[plugin_signing]`.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Sign a component with an Ed25519 secret key (wasmsign2 format; PEM as `audit keygen`
    /// writes it, DER, or wasmsign2's own): the signature is embedded as the component's first
    /// section, in place or into `--out`, or written alone to `--detached` (the component is
    /// left as it is; name that file in the plugin's `signature`).
    Sign {
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
        /// The component (`.wasm`).
        file: PathBuf,
        /// Where the signed component goes (default: over `FILE`).
        #[arg(long, conflicts_with = "detached")]
        out: Option<PathBuf>,
        /// Write only the signature, to this file.
        #[arg(long)]
        detached: Option<PathBuf>,
    },
    /// Check a component's signature as the gateway does at load. Exits 0 and names the key
    /// that signed it; 1 when it is unsigned or no key verifies it; 2 when a file is unusable.
    Verify {
        /// A trusted public key file; repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
        /// A detached signature (default: the one embedded in the component).
        #[arg(long)]
        signature: Option<PathBuf>,
        /// The component (`.wasm`).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit file written by the `audit` capability, and its
    /// signed checkpoints. Exits 0 and prints the record count and last hash when intact;
    /// otherwise prints the first broken record (`FILE: record N (line L): reason`) and
    /// exits 1. With `--key`, every checkpoint in the file must verify and there must be one
    /// when the file has records; with `--checkpoints`, the file must hold, unchanged, the records
    /// covered by the latest exported checkpoint of it (a cut tail is found so). Exits 2 when
    /// a file cannot be read or a key or exported checkpoint is unusable.
    Verify {
        /// The audit file (JSON Lines).
        file: PathBuf,
        /// A key file: an Ed25519 public key (SPKI PEM, as `audit keygen` writes it) or the
        /// HMAC key. Repeat for checkpoints signed before a key rotation.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// The checkpoints exported off the box (`checkpoint_file`, one JSON line each, or
        /// lines cut from the log); needs `--key`.
        #[arg(long, requires = "keys")]
        checkpoints: Option<PathBuf>,
    },
    /// Write a new Ed25519 key pair for `audit_signing`: `PREFIX.key` (PKCS#8 PEM, mode 0600,
    /// for a `[secret]`) and `PREFIX.pub` (SPKI PEM, for `audit verify --key`).
    Keygen {
        /// Path prefix of the two files; neither may exist.
        prefix: PathBuf,
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
        Command::Audit { command: AuditCommand::Verify { file, keys, checkpoints } } => {
            verify_audit(&file, &keys, checkpoints.as_deref())
        }
        Command::Audit { command: AuditCommand::Keygen { prefix } } => keygen(&prefix),
        Command::Plugin { command: PluginCommand::Sign { key, file, out, detached } } => {
            sign_plugin(&key, &file, out.as_deref(), detached.as_deref())
        }
        Command::Plugin { command: PluginCommand::Verify { keys, signature, file } } => {
            verify_plugin(&keys, signature.as_deref(), &file)
        }
        Command::New { kind, lang, dir, sdk } => scaffold(kind, lang, &dir, sdk),
    }
}

/// `portcullis audit verify` (see [`AuditCommand::Verify`]).
fn verify_audit(file: &std::path::Path, keys: &[PathBuf], checkpoints: Option<&std::path::Path>) -> ExitCode {
    use portcullis::plugin::audit;
    use portcullis::plugin::checkpoint::{Checkpoint, VerifyingKey};
    let unusable = |what: String| {
        eprintln!("portcullis audit verify: {what}");
        ExitCode::from(2)
    };
    let mut verifying = Vec::new();
    for key in keys {
        match std::fs::read(key).map_err(|e| e.to_string()).and_then(|bytes| VerifyingKey::parse(&bytes)) {
            Ok(key) => verifying.push(key),
            Err(e) => return unusable(format!("{}: {e}", key.display())),
        }
    }
    let mut exported = Vec::new();
    if let Some(path) = checkpoints {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => return unusable(format!("{}: cannot read: {e}", path.display())),
        };
        // Lines of a log may carry other text around the checkpoint's JSON.
        for (i, line) in text.lines().enumerate() {
            let Some(json) = line.find(r#"{"portcullis_audit":"checkpoint","#).map(|at| &line[at..]) else { continue };
            let json = json.find('}').map_or(json, |end| &json[..=end]);
            let checked = Checkpoint::from_record(json)
                .unwrap_or_else(|| Err("not a checkpoint".into()))
                .and_then(|c| c.check(&verifying).map(|()| c));
            match checked {
                Ok(checkpoint) => exported.push(checkpoint),
                Err(e) => return unusable(format!("{} line {}: {e}", path.display(), i + 1)),
            }
        }
    }
    let opened = std::fs::File::open(file).map(std::io::BufReader::new);
    let report = match opened.and_then(|input| audit::verify_signed(input, &verifying, &exported)) {
        Ok(Ok(report)) => report,
        Ok(Err(broken)) => {
            println!("{}: {broken}", file.display());
            return ExitCode::FAILURE;
        }
        Err(e) => return unusable(format!("{}: cannot read: {e}", file.display())),
    };
    let name = file.display();
    println!("{name}: intact, {} records, last hash {}", report.records, report.last);
    if verifying.is_empty() {
        if report.checkpoints > 0 {
            println!("{name}: {} checkpoints not checked: give --key to check their signatures", report.checkpoints);
        }
        return ExitCode::SUCCESS;
    }
    if report.checkpoints == 0 && report.records > 0 {
        println!("{name}: no signed checkpoint: none of its {} records is covered by a signature", report.records);
        return ExitCode::FAILURE;
    }
    println!(
        "{name}: {} checkpoints verified; the last covers {} records; {} records after it are not signed yet",
        report.checkpoints,
        report.signed,
        report.unsigned()
    );
    if checkpoints.is_some() {
        match &report.exported {
            Some(c) => {
                println!("{name}: holds the {} records of the checkpoint exported at {} ms", c.records, c.time_ms)
            }
            None if report.records == 0 => {}
            None => {
                println!(
                    "{name}: no exported checkpoint is of this file (file_start {}): it is not the file they were \
                     exported from, or they were exported before its first checkpoint",
                    report.file_start
                );
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `portcullis plugin sign` (see [`PluginCommand::Sign`]).
fn sign_plugin(
    key: &std::path::Path,
    file: &std::path::Path,
    out: Option<&std::path::Path>,
    detached: Option<&std::path::Path>,
) -> ExitCode {
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let signed = read(key).and_then(|key| {
        let component = read(file)?;
        let (signed, signature) =
            portcullis::plugin::signing::sign(&component, &key).map_err(|e| format!("{}: {e}", file.display()))?;
        let (target, bytes) = match detached {
            Some(path) => (path, signature),
            None => (out.unwrap_or(file), signed),
        };
        std::fs::write(target, bytes).map_err(|e| format!("{}: {e}", target.display()))?;
        Ok(target.to_owned())
    });
    match signed {
        Ok(target) => {
            println!("{}: signed ({})", file.display(), target.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis plugin sign: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `portcullis plugin verify` (see [`PluginCommand::Verify`]).
fn verify_plugin(keys: &[PathBuf], signature: Option<&std::path::Path>, file: &std::path::Path) -> ExitCode {
    use portcullis::plugin::signing::TrustedKeys;
    let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    let inputs = keys
        .iter()
        .map(|k| read(k).map(|bytes| (k.clone(), bytes)))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|files| TrustedKeys::parse(&files).map_err(|(path, why)| format!("{}: {why}", path.display())))
        .and_then(|trusted| {
            let detached = signature.map(read).transpose()?;
            Ok((trusted, read(file)?, detached))
        });
    let (trusted, component, detached) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            eprintln!("portcullis plugin verify: {e}");
            return ExitCode::from(2);
        }
    };
    match trusted.verify(&component, detached.as_deref()) {
        Ok(key) => {
            println!("{}: signed by {}", file.display(), key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `portcullis audit keygen` (see [`AuditCommand::Keygen`]).
fn keygen(prefix: &std::path::Path) -> ExitCode {
    use std::io::Write as _;
    let private = prefix.with_added_extension("key");
    let public = prefix.with_added_extension("pub");
    let written = portcullis::plugin::checkpoint::generate().and_then(|(key, pubkey)| {
        let create = |path: &std::path::Path, mode: u32, text: &str| {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        create(&private, 0o600, &key)?;
        create(&public, 0o644, &pubkey)
    });
    match written {
        Ok(()) => {
            println!("{}: the private key, for a [secret] named by audit_signing.key", private.display());
            println!("{}: the public key, for audit verify --key", public.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis audit keygen: {e}");
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
