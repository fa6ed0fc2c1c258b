//! Drives the demo (and examples/starter) in headless Chromium through
//! chromedriver (fantoccini).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_owned()
}

/// Where cargo puts build output.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A server built by `cargo leptos build`: its binary, its site directory,
/// its output name and the variable that names its database file.
#[derive(Debug, Clone)]
pub struct Build {
    bin: PathBuf,
    site: PathBuf,
    output_name: &'static str,
    db_var: &'static str,
}

impl Build {
    /// The demo, built by `cargo leptos build` in the workspace.
    pub fn demo() -> Build {
        Build {
            bin: std::env::var_os("ATOMSYNC_DEMO_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| target_dir().join("debug/demo")),
            site: std::env::var_os("ATOMSYNC_DEMO_SITE")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target/site")),
            output_name: "demo",
            db_var: "ATOMSYNC_DB",
        }
        .checked("`cargo leptos build`")
    }

    /// examples/starter, built by `cargo leptos build` in its directory
    /// (with the same `CARGO_TARGET_DIR`, if one is set).
    pub fn starter() -> Build {
        let dir = workspace_root().join("examples/starter");
        let bin = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(_) => target_dir().join("debug/starter"),
            None => dir.join("target/debug/starter"),
        };
        Build {
            bin: std::env::var_os("ATOMSYNC_STARTER_BIN")
                .map(PathBuf::from)
                .unwrap_or(bin),
            site: dir.join("target/site"),
            output_name: "starter",
            db_var: "STARTER_DB",
        }
        .checked("`cd examples/starter && cargo leptos build`")
    }

    fn checked(self, command: &str) -> Build {
        assert!(
            self.bin.exists() && self.site.join("pkg").exists(),
            "{} is not built ({} / {}): run {command} first (scripts/test.sh does)",
            self.output_name,
            self.bin.display(),
            self.site.display()
        );
        self
    }
}

/// A running demo (or starter) server on 127.0.0.1, stopped when dropped.
pub struct Demo {
    child: Option<Child>,
    /// The server's port.
    pub port: u16,
    build: Build,
    env: Vec<(String, String)>,
    db: PathBuf,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the demo on an ephemeral port with a fresh database.
    pub async fn start() -> Demo {
        Demo::start_with(Build::demo(), &[]).await
    }

    /// [`Demo::start`] with extra environment variables for the server (like
    /// `ATOMSYNC_MAX_SUBSCRIBERS`).
    pub async fn start_with_env(env: &[(&str, &str)]) -> Demo {
        Demo::start_with(Build::demo(), env).await
    }

    /// Starts `build` on an ephemeral port with a fresh database and the
    /// environment variables `env`.
    pub async fn start_with(build: Build, env: &[(&str, &str)]) -> Demo {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("app.db");
        let mut demo = Demo {
            child: None,
            port: 0,
            build,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            db,
            log: Arc::default(),
            _dir: dir,
        };
        demo.launch(0).await;
        demo
    }

    async fn launch(&mut self, port: u16) {
        let build = &self.build;
        let mut child = Command::new(&build.bin)
            .env("LEPTOS_SITE_ADDR", format!("127.0.0.1:{port}"))
            .env("LEPTOS_SITE_ROOT", &build.site)
            .env("LEPTOS_SITE_PKG_DIR", "pkg")
            .env("LEPTOS_OUTPUT_NAME", build.output_name)
            .env("LEPTOS_ENV", "DEV")
            .env(build.db_var, &self.db)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self._dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server");
        // The server log (stderr), kept for [`Demo::log`].
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&self.log);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = log
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push_str(&line);
                log.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return addr.to_owned();
                }
            }
            panic!("the demo exited before listening");
        })
        .await
        .expect("the demo starts within 30 s");
        self.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the listening line");
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// The port the app listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The app's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The body of a plain `GET` of `path` (HTTP/1.0, no scripts run).
    pub async fn get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the demo");
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// Opens `GET /atomsync/events?group={group}` and waits for the stream's
    /// first event (the current cursor), as a browser's `EventSource` would.
    /// The stream stays open while the returned connection lives.
    pub async fn open_event_stream(&self, group: &str) -> tokio::net::TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the server");
        let request = format!(
            "GET /atomsync/events?group={group} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Accept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0; 1024];
            while !String::from_utf8_lossy(&received).contains("event: cursor") {
                let n = stream.read(&mut buf).await.expect("read the stream");
                assert!(
                    n > 0,
                    "the stream ended: {}",
                    String::from_utf8_lossy(&received)
                );
                received.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no event within 10 s: {}",
                String::from_utf8_lossy(&received)
            )
        });
        let head = String::from_utf8_lossy(&received);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stream
    }

    /// What the server wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends the server SIGINT (Ctrl-C) and waits up to `within` for it to
    /// exit; returns its exit status, or `None` if it is still running (it is
    /// then killed when the `Demo` is dropped).
    pub async fn interrupt(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = child.id()?;
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -INT {pid}");
        let status = tokio::time::timeout(within, child.wait()).await.ok()?;
        self.child = None;
        Some(status.expect("wait for the server"))
    }

    /// Kills the server (SIGKILL), as a crash or a lost network would.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port and database.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port;
        // The port may take a moment to be free again.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() || Instant::now() > deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.launch(port).await;
    }
}

/// A headless Chromium with its own profile, driven through its own
/// chromedriver; both stop when dropped.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver_port: u16,
    _driver: Child,
    profile: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Browser {
    /// Starts a fresh browser profile.
    pub async fn start() -> Browser {
        Browser::start_with_args(&[]).await
    }

    /// Starts a fresh browser profile with extra Chromium arguments (like
    /// `--host-resolver-rules=MAP app.test 127.0.0.1`, to give a second
    /// origin to a server on 127.0.0.1).
    pub async fn start_with_args(extra: &[&str]) -> Browser {
        let port = free_port();
        let driver = Command::new(
            std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned()),
        )
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver (apt-get install chromium-driver)");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let caps = serde_json::json!({
            "goog:loggingPrefs": { "browser": "ALL" },
            "goog:chromeOptions": {
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
                "args": args,
            }
        });
        let caps = caps.as_object().expect("object").clone();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver session: {e}"),
            }
        };
        Browser {
            client,
            driver_port: port,
            _driver: driver,
            profile,
        }
    }

    /// Opens `url` and waits until the app has loaded its local data.
    pub async fn open(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
        self.wait_ready().await;
    }

    /// Waits until the status bar says the local data is loaded.
    pub async fn wait_ready(&self) {
        self.wait_for("the app to load its local data", || async {
            self.attr("#ready", "data-ready").await.as_deref() == Some("true")
        })
        .await;
    }

    /// An attribute of the first element matching `css`.
    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let el = self.client.find(Locator::Css(css)).await.ok()?;
        el.attr(name).await.ok().flatten()
    }

    /// Runs JavaScript in the page and returns its value.
    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Sets an input's value as typing would (fires `input`).
    pub async fn fill(&self, css: &str, value: &str) {
        let script = format!(
            "const el = document.querySelector({css:?}); el.value = {value:?}; \
             el.dispatchEvent(new Event('input', {{ bubbles: true }})); return true;"
        );
        self.js(&script).await;
    }

    /// Adds a todo through the form.
    pub async fn add_todo(&self, title: &str, tags: &str, due: &str, weight: &str) {
        self.fill("#new-title", title).await;
        self.fill("#new-tags", tags).await;
        self.fill("#new-due", due).await;
        self.fill("#new-weight", weight).await;
        self.client
            .find(Locator::Css("#add"))
            .await
            .expect("add button")
            .click()
            .await
            .expect("click add");
    }

    /// The titles of the listed todos.
    pub async fn titles(&self) -> Vec<String> {
        let value = self
            .js("return [...document.querySelectorAll('#todos li .title')].map(e => e.textContent)")
            .await;
        serde_json::from_value(value).unwrap_or_default()
    }

    /// A todo's row as JSON: title, tags, due, weight bits.
    pub async fn todo_row(&self, title: &str) -> Option<serde_json::Value> {
        let script = format!(
            "for (const li of document.querySelectorAll('#todos li')) {{ \
               const t = li.querySelector('.title'); \
               if (t && t.textContent === {title:?}) return {{ \
                 key: li.dataset.key, \
                 done: li.querySelector('.toggle').checked, \
                 tags: [...li.querySelectorAll('.tag')].map(e => e.textContent), \
                 due: li.querySelector('.due').textContent, \
                 weightBits: li.querySelector('.weight').dataset.bits }}; }} \
             return null;"
        );
        match self.js(&script).await {
            serde_json::Value::Null => None,
            row => Some(row),
        }
    }

    /// Clicks the button `css` in the row of the todo titled `title`.
    pub async fn click_in_row(&self, title: &str, css: &str) {
        let script = format!(
            "for (const li of document.querySelectorAll('#todos li')) {{ \
               const t = li.querySelector('.title'); \
               if (t && t.textContent === {title:?}) {{ li.querySelector({css:?}).click(); return true; }} }} \
             return false;"
        );
        assert_eq!(
            self.js(&script).await,
            serde_json::json!(true),
            "no row {title:?}"
        );
    }

    /// The number of pending writes shown in the status bar.
    pub async fn pending(&self) -> Option<usize> {
        self.attr("#pending", "data-pending").await?.parse().ok()
    }

    /// Waits (up to 30 s) until `check` holds.
    pub async fn wait_for<F, Fut>(&self, what: &str, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !check().await {
            if Instant::now() > deadline {
                let body = self
                    .js("return document.body ? document.body.innerText : ''")
                    .await;
                let console = self.console().await;
                panic!("timed out waiting for {what}; page shows:\n{body}\nconsole: {console}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The browser console's messages since the last call (for diagnostics).
    pub async fn console(&self) -> String {
        use tokio::io::AsyncWriteExt;
        let Ok(id) = self.client.session_id().await else {
            return String::new();
        };
        let Some(id) = id else { return String::new() };
        let body = r#"{"type":"browser"}"#;
        let request = format!(
            // chromedriver answers HTTP/1.1 only, with the port in `Host`.
            "POST /session/{id}/se/log HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len(),
            port = self.driver_port
        );
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.driver_port)).await
        else {
            return String::new();
        };
        let _ = stream.write_all(request.as_bytes()).await;
        // Read the head, then `Content-Length` bytes (the connection may
        // stay open), for up to 10 s.
        let mut response = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0; 8192];
            loop {
                let text = String::from_utf8_lossy(&response);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head.lines().find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    });
                    if length.is_some_and(|n| body.len() >= n) {
                        return;
                    }
                }
                match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => response.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&response).into_owned()
    }

    /// The browser console's errors (level `SEVERE`) since the last read of
    /// the log, as `goog:loggingPrefs` gives them.
    pub async fn console_errors(&self) -> Vec<String> {
        let response = self.console().await;
        let Some((_, body)) = response.split_once("\r\n\r\n") else {
            return vec![format!("no answer from chromedriver's log: {response}")];
        };
        let Ok(log) = serde_json::from_str::<serde_json::Value>(body) else {
            return vec![format!("unreadable chromedriver log: {body}")];
        };
        log["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that panics never closes its session, and killing
        // chromedriver leaves Chromium running: stop this profile's processes.
        let _ = std::process::Command::new("pkill")
            .args(["-f", "--"])
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            .status();
    }
}
