//! The starter's server: the Leptos app, atomsync's server functions and
//! routes, and the data in an SQLite file.

use atomsync_server::{ServeOptions, Store, SyncService};
use axum::Router;
use leptos::prelude::*;
use leptos_axum::{LeptosRoutes, generate_route_list};
use starter::app::{App, shell};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = get_configuration(None)?.leptos_options;
    let db = std::env::var("STARTER_DB").unwrap_or_else(|_| "starter.db".to_owned());
    let service = SyncService::new(Store::open(&db, Default::default())?);

    // The server functions and server rendering read through the service.
    let context = {
        let service = service.clone();
        move || atomsync_leptos::provide_sync_service(service.clone())
    };
    let app = Router::new()
        .leptos_routes_with_context(&options, generate_route_list(App), context.clone(), {
            let options = options.clone();
            move || shell(options.clone())
        })
        // Live updates (/atomsync/events) and the plain HTTP protocol.
        .nest("/atomsync", atomsync_server::router(service))
        // Static files, and other paths rendered by the app (404): same context.
        .fallback(leptos_axum::file_and_error_handler_with_context(
            context, shell,
        ))
        .with_state(options.clone());

    let listener = tokio::net::TcpListener::bind(&options.site_addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // axum::serve with timeouts and a connection cap. On Ctrl-C it ends the
    // event streams too, so the server stops at once.
    atomsync_server::serve(listener, app, ServeOptions::default())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
