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
