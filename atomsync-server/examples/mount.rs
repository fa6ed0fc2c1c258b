//! Mounts the atomsync routes into an existing axum application, next to the
//! application's own routes, with the application's own sessions deciding who
//! may use which group.
//!
//! ```text
//! cargo run -p atomsync-server --example mount            # listens on 127.0.0.1:3000
//! curl -c jar 'http://127.0.0.1:3000/login?user=alice'
//! curl -b jar 'http://127.0.0.1:3000/atomsync/sync?group=alice.todo'   # 200
//! curl -b jar 'http://127.0.0.1:3000/atomsync/sync?group=bob.todo'     # 403
//! curl 'http://127.0.0.1:3000/atomsync/sync?group=alice.todo'          # 401
//! ```
//!
//! Pass another port as the first argument (0 picks a free one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use atomsync_server::{AuthError, Credentials, Store, SyncService};
use axum::Router;
use axum::extract::{Query, State};
use axum::response::{AppendHeaders, IntoResponse};
use axum::routing::get;
use http::header;

/// The host application's sessions: session id -> user name.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashMap<String, String>>>);

impl Sessions {
    fn user(&self, credentials: &Credentials) -> Option<String> {
        let cookies = credentials.headers().get(header::COOKIE)?.to_str().ok()?;
        let id = cookies
            .split(';')
            .find_map(|c| c.trim().strip_prefix("session="))?;
        self.0.lock().ok()?.get(id).cloned()
    }
}

async fn login(
    State(sessions): State<Sessions>,
    Query(params): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let user = params
        .get("user")
        .cloned()
        .unwrap_or_else(|| "guest".to_owned());
    let id = format!(
        "s-{}-{}",
        user,
        sessions.0.lock().map(|s| s.len()).unwrap_or(0)
    );
    if let Ok(mut sessions) = sessions.0.lock() {
        sessions.insert(id.clone(), user.clone());
    }
    (
        AppendHeaders([(
            header::SET_COOKIE,
            format!("session={id}; HttpOnly; Path=/"),
        )]),
        format!("logged in as {user}; your groups are named {user}.*\n"),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args().nth(1).map_or(Ok(3000), |p| p.parse())?;
    let sessions = Sessions::default();

    // A user may use the groups named after them: `alice.todo`, `alice.notes`.
    let authorizer = {
        let sessions = sessions.clone();
        move |credentials: &Credentials, group: &str| {
            let user = sessions.user(credentials).ok_or(AuthError::Unauthorized)?;
            match group.split_once('.') {
                Some((owner, _)) if owner == user => Ok(()),
                _ => Err(AuthError::Forbidden),
            }
        }
    };
    let store = Store::open_in_memory()?;
    // Cookies are sent with other sites' requests too: the service's
    // OriginPolicy (same-origin by default) refuses those before the
    // authorizer sees them (docs/security.md).
    let service = SyncService::with_authorizer(store, authorizer);

    // ANCHOR: mount
    let app = Router::new()
        .route("/", get(|| async { "the host application\n" }))
        .route("/login", get(login))
        // The sync protocol at /atomsync/sync and /atomsync/events.
        .nest("/atomsync", atomsync_server::router(service.clone()))
        .with_state(sessions);
    // ANCHOR_END: mount

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Like axum::serve, with timeouts and a cap on connections; on Ctrl-C the
    // event streams end too, so the server stops at once.
    atomsync_server::serve(listener, app, atomsync_server::ServeOptions::default())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
