//! The standalone atomsync server.
//!
//! ```text
//! atomsync-server --port 8090 --db my-data.db [--users users.toml] [--bind 127.0.0.1]
//! atomsync-server 8090 my-data.db
//! ```

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use atomsync_server::{
    RouterOptions, Store, StoreOptions, SyncService, Synchronous, TokenFile, router_with_options,
};
use axum::Router;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing_subscriber::EnvFilter;

/// Serves atomsync documents from a SQLite database over HTTP.
///
/// The protocol is served at /sync (GET: pull, POST: push) and /events
/// (server-sent events). Logs go to stderr; set RUST_LOG (e.g.
/// RUST_LOG=atomsync_server=debug) to change what is logged.
#[derive(Debug, Parser)]
#[command(name = "atomsync-server", version)]
struct Args {
    /// The port to listen on (same as --port); 0 picks a free one.
    #[arg(value_name = "PORT", conflicts_with = "port")]
    port_arg: Option<u16>,

    /// The SQLite database file (same as --db); created if missing.
    #[arg(value_name = "DB", conflicts_with = "db")]
    db_arg: Option<PathBuf>,

    /// The port to listen on; 0 picks a free one [default: 8090].
    #[arg(short, long)]
    port: Option<u16>,

    /// The SQLite database file; created if missing [default: atomsync.db].
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
    /// the server; repeat for more, `*` for any. None by default.
    #[arg(long = "allow-origin", value_name = "URL")]
    allow_origin: Vec<String>,

    /// The largest accepted request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = RouterOptions::default().max_body)]
    max_body: usize,

    /// How hard each commit waits for the disk.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    synchronous: Sync,
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

fn main() -> ExitCode {
    let args = Args::parse();
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

    let store_path = db.clone();
    let store = tokio::task::spawn_blocking(move || {
        Store::open(
            &store_path,
            StoreOptions::default().synchronous(synchronous),
        )
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot open database {}: {e}", db.display()))?;
    tracing::info!(db = %db.display(), epoch = store.epoch(), "database open");

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
    };

    let mut app: Router = router_with_options(
        service.clone(),
        RouterOptions::default().max_body(args.max_body),
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

    let signal_service = service.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            // End the event streams, or the graceful shutdown would wait for
            // them forever.
            signal_service.shutdown();
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
