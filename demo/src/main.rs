//! The demo's server: the Leptos app, atomsync's server functions and its
//! plain HTTP routes, with the data in an SQLite file.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use atomsync_server::{Store, StoreOptions, SyncService};
    use axum::Router;
    use demo::app::{App, shell};
    use leptos::prelude::*;
    use leptos_axum::{LeptosRoutes, generate_route_list};

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let conf = get_configuration(None)?;
    let leptos_options = conf.leptos_options;
    let db = std::env::var("ATOMSYNC_DB").unwrap_or_else(|_| "atomsync-demo.db".to_owned());
    let service = SyncService::new(Store::open(&db, StoreOptions::default())?);
    // The routes' limits, shared with the server functions. The browser
    // tests set a small cap on event streams through the environment.
    let mut options = atomsync_server::RouterOptions::default();
    if let Some(max) = std::env::var("ATOMSYNC_MAX_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options = options.max_subscribers(max);
    }

    // The browser tests start the demo misconfigured on purpose, to see the
    // mistake reported: ATOMSYNC_DEMO_FORGET=routes (no `.nest`) or
    // `service` (no `provide_sync_service`).
    let forget = std::env::var("ATOMSYNC_DEMO_FORGET").unwrap_or_default();
    let routes = generate_route_list(App);
    let context = {
        let service = (forget != "service").then(|| service.clone());
        let options = options.clone();
        move || {
            if let Some(service) = &service {
                atomsync_leptos::provide_sync_service_with_options(
                    service.clone(),
                    options.clone(),
                );
            }
        }
    };
    let mut app =
        Router::new().leptos_routes_with_context(&leptos_options, routes, context.clone(), {
            let options = leptos_options.clone();
            move || shell(options.clone())
        });
    if forget != "routes" {
        // The event stream for live updates, and the plain HTTP protocol for
        // clients that are not this app.
        app = app.nest(
            "/atomsync",
            atomsync_server::router_with_options(service.clone(), options),
        );
    }
    let app = app
        // Diagnostics: changes the server has received (the browser tests
        // check that N tabs do not push a change N times).
        .route(
            "/demo/changes-received",
            axum::routing::get(move || {
                let service = service.clone();
                async move { service.changes_received().to_string() }
            }),
        )
        .fallback(leptos_axum::file_and_error_handler_with_context(
            context, shell,
        ))
        .with_state(leptos_options.clone());

    let listener = tokio::net::TcpListener::bind(&leptos_options.site_addr).await?;
    // Tests read this line to find the port when site_addr ends in `:0`.
    println!("listening on http://{}", listener.local_addr()?);
    // axum::serve with timeouts and a cap on connections (docs/security.md);
    // on Ctrl-C the event streams end too, so the server stops at once.
    atomsync_server::serve(listener, app, atomsync_server::ServeOptions::default())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
