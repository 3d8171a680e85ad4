//! The X Activity API's persistent stream as a second input: the receiver
//! reads `GET /2/activity/stream` and stores every event; a receiver that was
//! down gets what X sent meanwhile from the reconnect's backfill.

use std::time::Duration;

use aaa_testkit::{
    SMALL_SIM_ARGS, Stack, StackOptions, delivered_keys, eventually, metric, stored_keys,
};

const BIN: &str = env!("CARGO_BIN_EXE_aaa");
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_stream_is_an_input_and_a_reconnect_backfills() {
    let stack = Stack::start(BIN, StackOptions::default()).await;
    let mut args = SMALL_SIM_ARGS.to_vec();
    args.extend(["--format", "xaa", "--stream"]);
    let sim = stack.start_sim(&args).await;
    let mut reader = stack.spawn_stream_receiver(&sim);
    let admin = format!("http://{}", reader.addr("admin").await);
    eventually(WAIT, "the stream to connect", || async {
        (metric(&admin, "aaa_receiver_stream_connected").await == 1.0).then_some(())
    })
    .await;

    let all_stored = || async {
        let expected = delivered_keys(&sim).await;
        eventually(WAIT, "every streamed event stored", || async {
            let stored = stored_keys(&stack.db).await;
            (!expected.is_empty() && stored == expected).then_some(())
        })
        .await;
        expected.len()
    };
    sim.generate(60).await;
    sim.settled(WAIT).await;
    let live = all_stored().await;
    assert!(live >= 60, "{live}");
    assert_eq!(
        stack.delivery_outcomes("ok").await,
        0.0,
        "nothing came by webhook: the stream carried it all"
    );

    // The reader dies; X keeps streaming to nobody (and does not retry).
    reader.kill();
    sim.generate(40).await;
    sim.settled(WAIT).await;
    let truth = sim.truth().await;
    let unsent = truth.iter().filter(|o| o["delivered"] != true).count();
    assert!(unsent > 0, "activity while nobody listened is owed");

    // Back: the connection asks for the last minutes again.
    let reader = stack.spawn_stream_receiver(&sim);
    let _ = reader.addr("admin").await;
    eventually(
        WAIT,
        "the backfill to deliver what nobody received",
        || async { (sim.summary().await["missing"] == 0).then_some(()) },
    )
    .await;
    let total = all_stored().await;
    assert!(total >= live + 40, "{total} after {live}");
    let backfilled = sim
        .truth()
        .await
        .iter()
        .flat_map(|o| o["attempts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["outcome"] == "stream backfill")
        .count();
    assert!(
        backfilled >= unsent,
        "{backfilled} backfilled, {unsent} missed"
    );
}

/// X allows an app a limited number of stream connections and keeps
/// counting one that dropped abruptly for 15 to 20 minutes, answering 429
/// TooManyConnections meanwhile. A second reader is refused, stays away for
/// the lock-out instead of reconnecting in a loop (which would prolong it),
/// and takes over once the first is gone and X's lock-out on it has passed.
/// (The simulator allows one connection and counts a dropped one for 5
/// simulated minutes: 5 real seconds at 60x.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_refused_for_too_many_connections_waits_out_the_lockout() {
    let stack = Stack::start(BIN, StackOptions::scaled(60.0)).await;
    let mut args = SMALL_SIM_ARGS.to_vec();
    args.extend([
        "--format",
        "xaa",
        "--stream",
        "--stream-connection-limit",
        "1",
        "--stream-lockout-secs",
        "300",
    ]);
    let sim = stack.start_sim(&args).await;
    let refused = || metric(&sim.url, "aaa_sim_stream_refused_total");
    let mut first = stack.spawn_stream_receiver(&sim);
    let first_admin = format!("http://{}", first.addr("admin").await);
    eventually(WAIT, "the first reader to connect", || async {
        (metric(&first_admin, "aaa_receiver_stream_connected").await == 1.0).then_some(())
    })
    .await;

    // Without a reset time from X, the second reader stays away for its
    // configured lock-out (6 real seconds here).
    let second = stack.spawn_stream_receiver_with(&sim, &[("AAA_STREAM_LOCKOUT_SECS", "6".into())]);
    let second_admin = format!("http://{}", second.addr("admin").await);
    eventually(WAIT, "the second reader refused and locked out", || async {
        let locked = metric(&second_admin, "aaa_receiver_stream_locked_out").await;
        let reason = aaa_testkit::metric_where(&second_admin, |l| {
            l.starts_with("aaa_receiver_stream_disconnects_total")
                && l.contains("too_many_connections")
        })
        .await;
        (locked == 1.0 && reason == 1.0).then_some(())
    })
    .await;

    // The first dies abruptly: X keeps counting its connection for 5
    // simulated minutes, then the second gets in.
    first.kill();
    eventually(WAIT, "the second reader to connect", || async {
        (metric(&second_admin, "aaa_receiver_stream_connected").await == 1.0).then_some(())
    })
    .await;
    let refusals = refused().await;
    assert!(
        refusals <= 2.0,
        "one refusal while the first was connected, at most one during its lock-out, then X's reset time was honoured: {refusals}"
    );
    sim.generate(30).await;
    sim.settled(WAIT).await;
    eventually(WAIT, "what the second reader streamed stored", || async {
        let stored = stored_keys(&stack.db).await;
        let expected = delivered_keys(&sim).await;
        (!expected.is_empty() && expected.iter().all(|k| stored.contains(k))).then_some(())
    })
    .await;
}
