//! Command-line interface: `serve`, `config check`, `client-config`, `cache`, `prefetch`,
//! `export`, `import`, `healthcheck`, `webhook`.
//!
//! Owns: argument parsing and process set-up (tracing, runtime). Calls into the library; holds no
//! registry logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;

mod cache_cmd;
mod health;
mod prefetch;
mod transfer;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "regmirror",
    version,
    about = "A pull-through cache for container registries"
)]
struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// TOML configuration file; without one the embedded defaults are used.
        #[arg(long, env = "REGMIRROR_CONFIG")]
        config: Option<PathBuf>,
        /// Address of the shared listener (overrides `listen` and REGMIRROR_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// The cache directory (overrides `data_dir` and REGMIRROR_DATA_DIR).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the configuration a client needs to pull through this mirror.
    ClientConfig(crate::client_config::Args),
    /// Inspect and trim the cache (safe while the server runs).
    Cache {
        #[command(flatten)]
        location: cache_cmd::Location,
        #[command(subcommand)]
        command: cache_cmd::CacheCommand,
    },
    /// Pull images into the cache ahead of use, with progress like a pull.
    Prefetch(prefetch::Args),
    /// Write cached images to an OCI image layout tarball (for an air-gapped mirror).
    Export(transfer::ExportArgs),
    /// Add the images of an OCI image layout tarball to the cache, every digest verified first.
    Import(transfer::ImportArgs),
    /// GET a health URL; exit 0 on 200 (the container image's HEALTHCHECK).
    Healthcheck(health::Args),
    /// Run the mutating admission webhook that rewrites pod images to the mirror (HTTPS).
    Webhook {
        /// The webhook's TOML file (listen, tls_cert/tls_key, mirror, [[registry]], ...).
        #[arg(long, env = "REGMIRROR_WEBHOOK_CONFIG")]
        config: PathBuf,
        /// Only check the file (keys and values, not the certificate files) and exit.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file and print the effective configuration.
    Check {
        #[arg(long, env = "REGMIRROR_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
        } => {
            let data_dir = data_dir.map(|d| d.display().to_string());
            serve(config, move |k| match k {
                "REGMIRROR_LISTEN" => listen.clone(),
                "REGMIRROR_DATA_DIR" => data_dir.clone(),
                _ => None,
            })
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => match Config::load(config.as_deref()) {
            Ok(c) => match crate::edge::Edge::check(&c)
                .map_err(|e| e.to_string())
                .and_then(|()| crate::edge::tls::check(&c).map_err(|e| e.to_string()))
            {
                Ok(()) => {
                    print!("{}", c.to_toml_masked());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
            Err(e) => fail(e),
        },
        Command::Cache { location, command } => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return fail(format!("cannot start the async runtime: {e}")),
            };
            match rt.block_on(cache_cmd::run(&location, &command)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Prefetch(args) => prefetch::main(args),
        Command::Export(args) => transfer::export(args),
        Command::Import(args) => transfer::import(args),
        Command::Healthcheck(args) => health::main(args),
        Command::Webhook { config, check } => crate::webhook::main(&config, check),
        Command::ClientConfig(args) => match crate::client_config::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("regmirror: {e}");
    ExitCode::from(2)
}

fn serve(path: Option<PathBuf>, flags: impl Fn(&str) -> Option<String>) -> ExitCode {
    let config = match Config::load_with(path.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    init_tracing(&config.log_format);
    crate::sys::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(crate::server::run(config, crate::server::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub(crate) fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REGMIRROR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, and never when NO_COLOR is set (no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
