//! The standalone atomsync server.
//!
//! ```text
//! atomsync-server --port 8090 --db my-data.db [--users users.toml] [--bind 127.0.0.1]
//! atomsync-server 8090 my-data.db
//! atomsync-server --port 8090 --db postgres://atomsync@127.0.0.1:5432/atomsync
//! atomsync-server inspect --db my-data.db [groups | group NAME | doc GROUP KEY | changes GROUP | pending]
//! ```
//!
//! `--db` takes a SQLite file or a PostgreSQL URL (`postgres://` or
//! `postgresql://`; the password from the URL or `PGPASSWORD`). Any number
//! of servers may share one PostgreSQL database: see `docs/deploy.md`.
//!
//! Limits (see `docs/security.md`): `--header-timeout`, `--body-timeout`,
//! `--idle-timeout` (seconds), `--max-connections`, `--max-subscribers`.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use atomsync_server::{
    OriginPolicy, RouterOptions, ServeOptions, Store, StoreOptions, SyncService, Synchronous,
    TokenFile, router_with_options,
};
use axum::Router;
use clap::{Parser, Subcommand, ValueEnum};
use http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing_subscriber::EnvFilter;

mod inspect_cli;

/// Serves atomsync documents from a SQLite database over HTTP.
///
/// The protocol is served at /sync (GET: pull, POST: push) and /events
/// (server-sent events). Logs go to stderr; set RUST_LOG (e.g.
/// RUST_LOG=atomsync_server=debug) to change what is logged.
#[derive(Debug, Parser)]
#[command(
    name = "atomsync-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Another task than serving.
    #[command(subcommand)]
    command: Option<Command>,

    /// The port to listen on (same as --port); 0 picks a free one.
    #[arg(value_name = "PORT", conflicts_with = "port")]
    port_arg: Option<u16>,

    /// The SQLite database file or PostgreSQL URL (same as --db).
    #[arg(value_name = "DB", conflicts_with = "db")]
    db_arg: Option<PathBuf>,

    /// The port to listen on; 0 picks a free one [default: 8090].
    #[arg(short, long)]
    port: Option<u16>,

    /// The SQLite database file (created if missing), or a PostgreSQL URL
    /// `postgres://user@host:5432/dbname` (the database must exist; the
    /// password from the URL or PGPASSWORD) [default: atomsync.db].
    #[arg(long)]
    db: Option<PathBuf>,

    /// A TOML users file (tokens and their groups); without it, every request
    /// may use every group.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,

    /// The address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    bind: IpAddr,

    /// An origin (like https://app.example.com) whose browser pages may call
    /// the server (CORS, and the cross-site check); repeat for more. `*`
    /// allows any origin and turns the cross-site check off: only with
    /// bearer tokens. None by default: only same-origin pages and clients
    /// that are not browsers.
    #[arg(long = "allow-origin", value_name = "URL")]
    allow_origin: Vec<String>,

    /// The largest accepted request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = RouterOptions::default().max_body)]
    max_body: usize,

    /// Seconds a client may take to send a request's headers.
    #[arg(long, value_name = "SECONDS", default_value_t = Seconds(ServeOptions::default().header_timeout))]
    header_timeout: Seconds,

    /// Seconds a request body may take to arrive (then 408).
    #[arg(long, value_name = "SECONDS", default_value_t = Seconds(RouterOptions::default().body_timeout))]
    body_timeout: Seconds,

    /// Seconds a connection may stay without reading or writing a byte
    /// (event streams send a heartbeat every 15 s).
    #[arg(long, value_name = "SECONDS", default_value_t = Seconds(ServeOptions::default().idle_timeout))]
    idle_timeout: Seconds,

    /// Connections served at once; more wait to be accepted. Keep it well
    /// under `ulimit -n`.
    #[arg(long, value_name = "N", default_value_t = ServeOptions::default().max_connections)]
    max_connections: usize,

    /// Event streams (/events) served at once; more get 503 with
    /// Retry-After.
    #[arg(long, value_name = "N", default_value_t = RouterOptions::default().max_subscribers)]
    max_subscribers: usize,

    /// How hard each commit waits for the disk.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    synchronous: Sync,

    /// Declare a restore the server cannot notice by itself (a backup put
    /// back together with its .atomsync-hwm file: a copy of the whole
    /// directory, a VM snapshot), naming it (a date, a ticket): the database
    /// gets a new epoch and every client pulls from the beginning, once per
    /// label, so the flag may stay in place.
    #[arg(long, value_name = "LABEL")]
    new_epoch: Option<String>,

    /// How long deleted documents (tombstones) are kept before they are
    /// purged, like 30d, 12h, 90m or 3600s; `never` keeps them for ever.
    /// Clients whose cursor is older than a purged tombstone pull from the
    /// beginning.
    #[arg(long, value_name = "DURATION", default_value = "30d", value_parser = horizon)]
    tombstone_horizon: Horizon,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Shows what a database holds, without changing it: a summary (epoch,
    /// latest cursor, counts) by default.
    Inspect(inspect_cli::InspectArgs),
}

/// A tombstone horizon: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct Horizon(Option<std::time::Duration>);

fn horizon(text: &str) -> Result<Horizon, String> {
    if text == "never" {
        return Ok(Horizon(None));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: s, m, h or d (like 30d), or `never`"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number of s, m, h or d, or `never`"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: the unit must be s, m, h or d")),
    };
    let total = number
        .checked_mul(seconds)
        .ok_or_else(|| format!("`{text}` is too long"))?;
    Ok(Horizon(Some(std::time::Duration::from_secs(total))))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    /// Durable across power failures.
    Full,
    /// Durable across process crashes.
    Normal,
    /// Not durable: tests only.
    Off,
}

/// A duration given in (possibly fractional) seconds, like `10` or `0.5`.
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl std::str::FromStr for Seconds {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .map(Seconds)
            .ok_or_else(|| format!("`{text}` is not a positive number of seconds"))
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(Command::Inspect(inspect)) = args.command.take() {
        return inspect_cli::run(&inspect);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("atomsync-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("atomsync-server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The database as logged: a URL's password is left out.
fn shown(db: &std::path::Path) -> String {
    let text = db.display().to_string();
    let Some(scheme) = text.find("://") else {
        return text;
    };
    let rest = &text[scheme + 3..];
    let authority = rest.find('/').map_or(rest, |slash| &rest[..slash]);
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &text[..scheme + 3],
            &rest[..colon],
            &rest[at..]
        ),
        _ => text,
    }
}

async fn run(args: Args) -> Result<(), String> {
    let port = args.port.or(args.port_arg).unwrap_or(8090);
    let db = args
        .db
        .or(args.db_arg)
        .unwrap_or_else(|| PathBuf::from("atomsync.db"));
    let synchronous = match args.synchronous {
        Sync::Full => Synchronous::Full,
        Sync::Normal => Synchronous::Normal,
        Sync::Off => Synchronous::Off,
    };
    let cors = cors(&args.allow_origin)?;
    // The same list decides which pages pass the cross-site check.
    let origins = OriginPolicy::from_list(&args.allow_origin).map_err(|e| e.to_string())?;
    if args.max_subscribers >= args.max_connections {
        tracing::warn!(
            max_subscribers = args.max_subscribers,
            max_connections = args.max_connections,
            "--max-subscribers is not below --max-connections: event streams can take every \
             connection"
        );
    }

    let store_path = db.clone();
    let store = tokio::task::spawn_blocking(move || {
        Store::open(
            &store_path,
            StoreOptions::default()
                .synchronous(synchronous)
                .new_epoch(args.new_epoch)
                .tombstone_horizon(args.tombstone_horizon.0),
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot open database {}: {e}", shown(&db)))?;
    tracing::info!(db = %shown(&db), epoch = store.epoch(), "database open");
    if let Some(reason) = store.new_epoch_reason() {
        tracing::warn!(
            "new epoch {}: {reason}; every client will pull from the beginning",
            store.epoch()
        );
    }

    let service = match &args.users {
        Some(path) => {
            let users = TokenFile::load(path).map_err(|e| match e {
                atomsync_server::Error::Io(e) => {
                    format!("cannot read users file {}: {e}", path.display())
                }
                e => e.to_string(),
            })?;
            tracing::info!(users = users.len(), "users loaded");
            SyncService::with_authorizer(store, users)
        }
        None => {
            tracing::warn!("no --users file: every request may use every group");
            SyncService::new(store)
        }
    }
    .with_origin_policy(origins);

    let mut app: Router = router_with_options(
        service.clone(),
        RouterOptions::default()
            .max_body(args.max_body)
            .body_timeout(args.body_timeout.0)
            .max_subscribers(args.max_subscribers),
    );
    if let Some(cors) = cors {
        app = app.layer(cors);
    }

    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind, port))
        .await
        .map_err(|e| format!("cannot listen on {}:{port}: {e}", args.bind))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{address}");
    let _ = std::io::stdout().flush();
    tracing::info!(%address, "listening");

    let limits = ServeOptions::default()
        .header_timeout(args.header_timeout.0)
        .idle_timeout(args.idle_timeout.0)
        .max_connections(args.max_connections);
    atomsync_server::serve(listener, app, limits)
        // The event streams end by themselves on the shutdown signal.
        .with_graceful_shutdown(async {
            shutdown_signal().await;
            tracing::info!("shutting down");
        })
        .await
        .map_err(|e| format!("server failed: {e}"))?;
    service.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| format!("invalid --allow-origin `{o}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(3600)),
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizons_parse_with_units_or_never() {
        let secs = |text| horizon(text).unwrap().0.map(|d| d.as_secs());
        assert_eq!(secs("30d"), Some(30 * 86_400));
        assert_eq!(secs("12h"), Some(12 * 3600));
        assert_eq!(secs("90m"), Some(5400));
        assert_eq!(secs("0s"), Some(0));
        assert_eq!(secs("never"), None);
        for bad in ["", "30", "d", "5x", "-1d", "1.5d", "99999999999999999999d"] {
            let error = horizon(bad).unwrap_err();
            assert!(
                error.contains('`') || error.contains("unit"),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn a_database_url_is_logged_without_its_password() {
        let shown = |db: &str| shown(std::path::Path::new(db));
        assert_eq!(
            shown("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(shown("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(shown("data/my.db"), "data/my.db");
    }
}
