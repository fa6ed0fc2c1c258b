//! The demo stops on Ctrl-C (SIGINT) while a browser listens to its event
//! stream: `atomsync_server::serve` ends the streams with its graceful
//! shutdown, without any call of the app's. (The starter's test is in
//! `starter.rs`.)

use std::time::Duration;

use atomsync_tests::browser::Demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stops_on_ctrl_c_with_an_event_stream_open() {
    let mut demo = Demo::start().await;
    let _stream = demo.open_event_stream("todo").await;
    let status = demo.interrupt(Duration::from_secs(5)).await;
    let status = status.expect("the demo exits within 5 s of SIGINT with a stream open");
    assert!(status.success(), "{status:?}\n{}", demo.log());
}
