//! `switchyard worker` / `serve` / `register` refuse inconsistent KV-event flags with a message
//! naming the problem (before binding anything).

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replay_without_the_event_stream_is_refused() {
    for (args, want) in [
        (
            &["worker", "--kv-events-replay", "tcp://*:5558"][..],
            "--kv-events",
        ),
        (
            &[
                "worker",
                "--port",
                "0",
                "--kv-events",
                "tcp://127.0.0.1:0",
                "--kv-events-buffer",
                "0",
            ][..],
            "--kv-events-buffer must be at least 1",
        ),
        (
            &[
                "serve",
                "--port",
                "0",
                "--worker",
                "http://h:1,replay=tcp://h:2",
            ][..],
            "replay= needs kv-events=",
        ),
        (
            &[
                "serve",
                "--port",
                "0",
                "--worker",
                "http://h:1,kv-events=tcp://h:1,replay=udp://h:2",
            ][..],
            "replay endpoint must be tcp://HOST:PORT",
        ),
        (
            &[
                "register",
                "--url",
                "http://h:8000",
                "--kv-events-replay",
                "tcp://h:5558",
            ][..],
            "kv_events_replay without kv_events",
        ),
    ] {
        let (ok, err) = run(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
