//! A whole round against fakes in memory: the state in Postgres, X and the
//! fences. What each statement does is tested against Postgres elsewhere
//! (tests/e2e/watermark.rs); here, what the round does with the answers.

use std::collections::HashMap;
use std::sync::Mutex;

use aaa_common::Clock;
use aaa_replay_window::Window;
use aaa_xapi::{Reason, ReplayJob, Webhook, XError};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use crate::Error;
use crate::at_x::AtX;
use crate::coverage::{Heartbeat, Interval, Life};
use crate::planner::WindowKind;
use crate::ports::{Fencer, RoundStore, XApi};
use crate::round::{Round, Settings};
use crate::service::run;
use crate::store::{InFlight, Lease, PendingWindow, Planned, Progress, Reservation, WindowState};

type Result<T> = std::result::Result<T, sqlx::Error>;

const WEBHOOK: &str = "w1";

#[derive(Debug, Clone)]
struct StoredWindow {
    id: i64,
    kind: WindowKind,
    state: WindowState,
    window: Interval,
    job_id: Option<String>,
    submitted_at: Option<DateTime<Utc>>,
    fence_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    attempts: i32,
    conflicts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
}

/// The watermark's tables for one webhook, in memory, with the same
/// conditions as the statements: every state change under the lease
/// (holder and generation) and from the state the round expects.
#[derive(Default)]
struct FakeStore {
    /// The lease as the table holds it now.
    lease: Option<(String, i64)>,
    progress: Progress,
    fences: (Option<DateTime<Utc>>, i64),
    heartbeats: Vec<Heartbeat>,
    validity: Vec<(DateTime<Utc>, bool)>,
    windows: Vec<StoredWindow>,
    job_states: HashMap<String, String>,
    /// (endpoint, at, outcome)
    x_requests: Vec<(String, DateTime<Utc>, String)>,
    /// Another replica takes the lease over just before this step: a
    /// store method's name, or `reserve:<endpoint>`.
    lease_taken_before: Option<&'static str>,
}

impl FakeStore {
    /// The lease changes hands if the scene says so for `step`.
    fn step(&mut self, step: &str) {
        if self.lease_taken_before == Some(step) {
            self.lease = Some(("replica-b".to_owned(), 99));
        }
    }

    fn held(&self, lease: &Lease) -> bool {
        self.lease == Some((lease.holder.clone(), lease.generation))
    }

    fn window_mut(&mut self, id: i64) -> Option<&mut StoredWindow> {
        self.windows.iter_mut().find(|w| w.id == id)
    }

    fn only_window(&self) -> &StoredWindow {
        assert_eq!(self.windows.len(), 1, "{:?}", self.windows);
        &self.windows[0]
    }
}

impl RoundStore for FakeStore {
    async fn progress(&mut self, _: &str) -> Result<Progress> {
        Ok(self.progress)
    }
    async fn begin_tracking(&mut self, lease: &Lease, from: DateTime<Utc>) -> Result<bool> {
        self.step("begin_tracking");
        if self.progress.judged_to.is_some() || !self.held(lease) {
            return Ok(false);
        }
        self.progress = Progress {
            judged_to: Some(from),
            tracked_from: Some(from),
        };
        Ok(true)
    }
    async fn advance_judged(&mut self, lease: &Lease, to: DateTime<Utc>) -> Result<bool> {
        self.step("advance_judged");
        if !self.held(lease) {
            return Ok(false);
        }
        self.progress.judged_to = self.progress.judged_to.max(Some(to));
        Ok(true)
    }
    async fn fences(&mut self, _: &str) -> Result<(Option<DateTime<Utc>>, i64)> {
        Ok(self.fences)
    }
    async fn reserve_x_request(
        &mut self,
        lease: &Lease,
        endpoint: &str,
        limit: i64,
        at: DateTime<Utc>,
    ) -> Result<Reservation> {
        self.step(&format!("reserve:{endpoint}"));
        if !self.held(lease) {
            return Ok(Reservation::LeaseLost);
        }
        let recent = self
            .x_requests
            .iter()
            .filter(|(e, t, _)| e == endpoint && *t > at - crate::store::RATE_WINDOW)
            .count();
        if recent as i64 >= limit {
            return Ok(Reservation::BudgetUsed);
        }
        self.x_requests
            .push((endpoint.to_owned(), at, "sent".to_owned()));
        Ok(Reservation::Reserved(self.x_requests.len() as i64 - 1))
    }
    async fn record_x_outcome(&mut self, id: i64, outcome: &str) -> Result<()> {
        self.x_requests[id as usize].2 = outcome.to_owned();
        Ok(())
    }
    async fn record_validity(&mut self, _: &str, at: DateTime<Utc>, valid: bool) -> Result<()> {
        self.validity.push((at, valid));
        self.validity.sort();
        Ok(())
    }
    async fn validity_since(
        &mut self,
        _: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<(DateTime<Utc>, bool)>> {
        Ok(self
            .validity
            .iter()
            .copied()
            .filter(|(at, _)| *at >= since)
            .collect())
    }
    async fn first_heartbeat(&mut self, _: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.heartbeats.iter().map(|h| h.covered.from).min())
    }
    async fn heartbeats_since(&mut self, _: &str, since: DateTime<Utc>) -> Result<Vec<Heartbeat>> {
        Ok(self
            .heartbeats
            .iter()
            .filter(|h| h.covered.to >= since || h.next_due.is_some_and(|d| d >= since))
            .cloned()
            .collect())
    }
    async fn windows_since(&mut self, _: &str, since: DateTime<Utc>) -> Result<Vec<Interval>> {
        Ok(self
            .windows
            .iter()
            .filter(|w| w.window.to >= since)
            .map(|w| w.window)
            .collect())
    }
    async fn insert_window(
        &mut self,
        lease: &Lease,
        window: Interval,
        kind: WindowKind,
        state: WindowState,
        now: DateTime<Utc>,
    ) -> Result<Planned> {
        if !self.held(lease) {
            return Ok(Planned::LeaseLost);
        }
        if self
            .windows
            .iter()
            .any(|w| w.kind == kind && w.window == window)
        {
            return Ok(Planned::AlreadyPlanned);
        }
        self.windows.push(StoredWindow {
            id: self.windows.len() as i64 + 1,
            kind,
            state,
            window,
            job_id: None,
            submitted_at: None,
            fence_at: None,
            created_at: now,
            attempts: 0,
            conflicts: 0,
            next_attempt_at: Some(now),
        });
        Ok(Planned::Inserted)
    }
    async fn in_flight(&mut self, _: &str) -> Result<Option<InFlight>> {
        Ok(self
            .windows
            .iter()
            .find(|w| w.state == WindowState::Submitted)
            .map(|w| InFlight {
                id: w.id,
                job_id: w.job_id.clone(),
                submitted_at: w.submitted_at,
                fence_at: w.fence_at,
                created_at: w.created_at,
                kind: w.kind,
                attempts: w.attempts,
            }))
    }
    async fn job_state(&mut self, job_id: Option<&str>) -> Result<Option<String>> {
        Ok(job_id.and_then(|id| self.job_states.get(id).cloned()))
    }
    async fn set_fence(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let held = self.held(lease);
        Ok(match self.window_mut(job.id) {
            Some(w) if held && w.state == WindowState::Submitted && w.fence_at.is_none() => {
                w.fence_at = Some(at);
                true
            }
            _ => false,
        })
    }
    async fn reconcile(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        _: DateTime<Utc>,
    ) -> Result<Option<(i64, i64)>> {
        let held = self.held(lease);
        Ok(match self.window_mut(job.id) {
            Some(w) if held && w.state == WindowState::Submitted => {
                w.state = WindowState::Reconciled;
                Some((0, 0))
            }
            _ => None,
        })
    }
    async fn requeue(
        &mut self,
        lease: &Lease,
        job: &InFlight,
        at: DateTime<Utc>,
        _: &str,
    ) -> Result<bool> {
        let held = self.held(lease);
        Ok(match self.window_mut(job.id) {
            Some(w) if held && w.state == WindowState::Submitted => {
                w.state = WindowState::Pending;
                w.job_id = None;
                w.fence_at = None;
                w.next_attempt_at = Some(at);
                true
            }
            _ => false,
        })
    }
    async fn next_pending(&mut self, _: &str, now: DateTime<Utc>) -> Result<Option<PendingWindow>> {
        let mut due: Vec<&StoredWindow> = self
            .windows
            .iter()
            .filter(|w| {
                w.state == WindowState::Pending && w.next_attempt_at.is_none_or(|t| t <= now)
            })
            .collect();
        due.sort_by_key(|w| (w.kind == WindowKind::Audit, w.window.from));
        Ok(due.first().map(|w| PendingWindow {
            id: w.id,
            from: w.window.from,
            to: w.window.to,
            attempts: w.attempts,
            conflicts: w.conflicts,
            kind: w.kind,
        }))
    }
    async fn gaps_waiting(&mut self) -> Result<Vec<String>> {
        let waiting = self
            .windows
            .iter()
            .any(|w| w.kind == WindowKind::Gap && w.state == WindowState::Pending);
        Ok(if waiting {
            vec![WEBHOOK.to_owned()]
        } else {
            Vec::new()
        })
    }
    async fn expire(&mut self, lease: &Lease, id: i64, _: &str) -> Result<bool> {
        let held = self.held(lease);
        Ok(match self.window_mut(id) {
            Some(w) if held && w.state == WindowState::Pending => {
                w.state = WindowState::Expired;
                true
            }
            _ => false,
        })
    }
    async fn trim_start(
        &mut self,
        lease: &Lease,
        window: &PendingWindow,
        from: DateTime<Utc>,
    ) -> Result<bool> {
        let held = self.held(lease);
        Ok(match self.window_mut(window.id) {
            Some(w) if held && w.state == WindowState::Pending && w.window.from == window.from => {
                w.window.from = from;
                true
            }
            _ => false,
        })
    }
    async fn mark_submitted(&mut self, id: i64, job_id: &str, at: DateTime<Utc>) -> Result<bool> {
        Ok(match self.window_mut(id) {
            Some(w) if w.state == WindowState::Pending => {
                w.state = WindowState::Submitted;
                w.job_id = Some(job_id.to_owned());
                w.submitted_at = Some(at);
                w.fence_at = None;
                w.attempts += 1;
                true
            }
            _ => false,
        })
    }
    async fn retry_later(
        &mut self,
        lease: &Lease,
        id: i64,
        at: DateTime<Utc>,
        _: &str,
        conflict: bool,
    ) -> Result<bool> {
        let held = self.held(lease);
        Ok(match self.window_mut(id) {
            Some(w) if held && w.state == WindowState::Pending => {
                w.attempts += 1;
                w.conflicts += i32::from(conflict);
                w.next_attempt_at = Some(at);
                true
            }
            _ => false,
        })
    }
    async fn window_counts(&mut self, _: &str) -> Result<Vec<(WindowKind, WindowState, i64)>> {
        let mut counts: Vec<(WindowKind, WindowState, i64)> = Vec::new();
        for w in &self.windows {
            match counts
                .iter_mut()
                .find(|(k, s, _)| *k == w.kind && *s == w.state)
            {
                Some((_, _, n)) => *n += 1,
                None => counts.push((w.kind, w.state, 1)),
            }
        }
        Ok(counts)
    }
    async fn oldest_open_gap(&mut self, _: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .windows
            .iter()
            .filter(|w| {
                w.kind == WindowKind::Gap
                    && matches!(w.state, WindowState::Pending | WindowState::Submitted)
            })
            .map(|w| w.window.from)
            .min())
    }
}

/// X: the webhook listed valid, and replay submissions answered in turn.
struct FakeX {
    registered_at: DateTime<Utc>,
    answers: Mutex<Vec<std::result::Result<ReplayJob, XError>>>,
    submitted: Mutex<Vec<Window>>,
}

impl FakeX {
    fn answering(
        registered_at: DateTime<Utc>,
        answers: Vec<std::result::Result<ReplayJob, XError>>,
    ) -> FakeX {
        FakeX {
            registered_at,
            answers: Mutex::new(answers),
            submitted: Mutex::new(Vec::new()),
        }
    }
}

fn job(id: &str) -> ReplayJob {
    ReplayJob {
        job_id: id.to_owned(),
        created_at: None,
        from_date: String::new(),
        to_date: String::new(),
    }
}

impl XApi for FakeX {
    async fn list_webhooks(&self) -> std::result::Result<Vec<Webhook>, XError> {
        Ok(vec![Webhook {
            id: WEBHOOK.to_owned(),
            url: "https://receiver.example/webhooks/x".to_owned(),
            valid: true,
            created_at: Some(self.registered_at.to_rfc3339()),
        }])
    }
    async fn validate_webhook(&self, _: &str) -> std::result::Result<bool, XError> {
        Ok(true)
    }
    async fn submit_replay(
        &self,
        _: &str,
        window: Window,
        _: DateTime<Utc>,
    ) -> std::result::Result<ReplayJob, XError> {
        self.submitted.lock().expect("not poisoned").push(window);
        let mut answers = self.answers.lock().expect("not poisoned");
        if answers.is_empty() {
            Ok(job("job-next"))
        } else {
            answers.remove(0)
        }
    }
    fn last_x_date(&self) -> Option<DateTime<Utc>> {
        None
    }
}

/// One partition; counts the fences written.
#[derive(Default)]
struct FakeFences {
    written: Mutex<usize>,
}

impl Fencer for FakeFences {
    async fn write(&self, _: DateTime<Utc>) -> bool {
        *self.written.lock().expect("not poisoned") += 1;
        true
    }
    fn topic(&self) -> &str {
        "aaa.raw"
    }
    fn partitions(&self) -> usize {
        1
    }
}

fn settings() -> Settings {
    Settings {
        webhooks: vec![WEBHOOK.to_owned()],
        job_timeout: TimeDelta::minutes(30),
        backoff: TimeDelta::seconds(60),
        replay_limit: 100,
        audit_span: TimeDelta::zero(),
        audit_spans: HashMap::new(),
        edge_margin: TimeDelta::seconds(60),
        validity_unknown_after: TimeDelta::minutes(30),
        receiver_margin: TimeDelta::seconds(30),
    }
}

/// A healthy heartbeat of the one receiver's one life, the next due a
/// minute after it.
fn beat(from: DateTime<Utc>, to: DateTime<Utc>) -> Heartbeat {
    Heartbeat {
        life: Life {
            replica: "receiver-1".to_owned(),
            started_at: Some(DateTime::UNIX_EPOCH),
        },
        covered: Interval::new(from, to),
        healthy: true,
        closing: false,
        next_due: Some(to + TimeDelta::minutes(1)),
    }
}

/// A webhook tracked for 5 h, judged up to 3 h ago, whose receivers
/// reported everything but the 30 minutes from 2 h ago; the consumer has
/// stored everything up to `now`. The round holds the lease.
struct Scene {
    now: DateTime<Utc>,
    store: FakeStore,
    lease: Lease,
    settings: Settings,
    fences: FakeFences,
}

impl Scene {
    fn new() -> Scene {
        let now = Utc::now()
            .duration_trunc(TimeDelta::minutes(1))
            .expect("a minute");
        let h = TimeDelta::hours;
        let store = FakeStore {
            lease: Some(("replica-a".to_owned(), 7)),
            progress: Progress {
                judged_to: Some(now - h(3)),
                tracked_from: Some(now - h(5)),
            },
            fences: (Some(now), 1),
            heartbeats: vec![
                beat(now - h(5), now - h(2)),
                beat(now - h(2) + TimeDelta::minutes(30), now),
            ],
            ..FakeStore::default()
        };
        Scene {
            now,
            store,
            lease: Lease {
                webhook: WEBHOOK.to_owned(),
                holder: "replica-a".to_owned(),
                generation: 7,
            },
            settings: settings(),
            fences: FakeFences::default(),
        }
    }

    /// The window the silence is replayed as: its minutes and the one
    /// either side (a heartbeat's edge minute may have lost deliveries).
    fn gap(&self) -> Interval {
        let minute = TimeDelta::minutes(1);
        Interval::new(
            self.now - TimeDelta::hours(2) - minute,
            self.now - TimeDelta::hours(2) + TimeDelta::minutes(30) + minute,
        )
    }

    async fn round(
        &mut self,
        x: &AtX<FakeX>,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), Error> {
        let progress = self.store.progress;
        let mut round = Round {
            store: &mut self.store,
            lease: &self.lease,
            webhook: WEBHOOK,
            now,
            settings: &self.settings,
            x,
            fences: &self.fences,
            clock: Clock::Wall,
        };
        run(&mut round, progress).await
    }
}

fn at_x(x: FakeX) -> AtX<FakeX> {
    AtX::with(
        x,
        Clock::Wall,
        TimeDelta::minutes(5),
        15,
        TimeDelta::seconds(60),
    )
}

fn submitted(x: &AtX<FakeX>) -> Vec<Window> {
    x.fake().submitted.lock().expect("not poisoned").clone()
}

#[tokio::test]
async fn a_gap_is_planned_and_submitted_as_one_replay_job() {
    let mut scene = Scene::new();
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        vec![Ok(job("j1"))],
    ));
    scene.round(&x, scene.now).await.expect("a round");
    let gap = scene.gap();
    assert_eq!(
        submitted(&x),
        [Window {
            from: gap.from,
            to_exclusive: gap.to
        }]
    );
    let window = scene.store.only_window();
    assert_eq!(
        (window.kind, window.state),
        (WindowKind::Gap, WindowState::Submitted)
    );
    assert_eq!(window.job_id.as_deref(), Some("j1"));
    assert_eq!(
        scene.store.progress.judged_to,
        Some(scene.now),
        "judged up to the horizon"
    );
    let outcomes: Vec<(&str, &str)> = scene
        .store
        .x_requests
        .iter()
        .map(|(e, _, o)| (e.as_str(), o.as_str()))
        .collect();
    assert_eq!(outcomes, [("webhooks_list", "ok"), ("replay_submit", "ok")]);
    // The next round finds the job in flight and submits nothing more.
    scene
        .round(&x, scene.now + TimeDelta::minutes(1))
        .await
        .expect("a round");
    assert_eq!(submitted(&x).len(), 1);
}

#[tokio::test]
async fn a_conflict_keeps_the_window_pending_and_backs_off() {
    let mut scene = Scene::new();
    let conflict = XError::Refused {
        status: 409,
        reason: Reason::ReplayConflict,
        message: "A replay job is already in progress".into(),
        body: String::new(),
    };
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        vec![Err(conflict)],
    ));
    scene.round(&x, scene.now).await.expect("a round");
    let window = scene.store.only_window();
    assert_eq!(window.state, WindowState::Pending);
    assert_eq!((window.attempts, window.conflicts), (1, 1));
    assert_eq!(
        window.next_attempt_at,
        Some(scene.now + TimeDelta::seconds(60))
    );
    assert_eq!(
        scene.store.x_requests[1].2, "refused",
        "the refusal is counted"
    );
    // Not before the backoff ends.
    scene
        .round(&x, scene.now + TimeDelta::seconds(30))
        .await
        .expect("a round");
    assert_eq!(submitted(&x).len(), 1);
    scene
        .round(&x, scene.now + TimeDelta::seconds(61))
        .await
        .expect("a round");
    assert_eq!(submitted(&x).len(), 2);
    assert_eq!(scene.store.only_window().state, WindowState::Submitted);
}

#[tokio::test]
async fn a_round_that_lost_its_lease_plans_and_submits_nothing() {
    let mut scene = Scene::new();
    // Another replica took the lease over since this round took it.
    scene.store.lease = Some(("replica-b".to_owned(), 8));
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        Vec::new(),
    ));
    let result = scene.round(&x, scene.now).await;
    assert!(
        matches!(result, Err(Error::LeaseLost(ref w)) if w == WEBHOOK),
        "{result:?}"
    );
    assert!(scene.store.windows.is_empty());
    assert!(submitted(&x).is_empty());
}

/// A former holder (frozen, then thawed mid-round) finds the lease taken
/// at each step that changes state: it marks no tracking start, moves
/// judging nowhere, spends none of X's budget and sends X nothing.
#[tokio::test]
async fn a_round_whose_lease_changes_hands_mid_round_stops_at_the_next_step() {
    // Before the replay is submitted: X never sees the request.
    let mut scene = Scene::new();
    scene.store.lease_taken_before = Some("reserve:replay_submit");
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        vec![Ok(job("j1"))],
    ));
    let result = scene.round(&x, scene.now).await;
    assert!(matches!(result, Err(Error::LeaseLost(_))), "{result:?}");
    assert!(submitted(&x).is_empty(), "nothing sent to X");
    assert!(
        scene
            .store
            .x_requests
            .iter()
            .all(|(e, _, _)| e != "replay_submit"),
        "no budget spent: {:?}",
        scene.store.x_requests
    );
    assert_eq!(scene.store.only_window().state, WindowState::Pending);

    // Before judging is advanced (nothing to plan: fully covered).
    let mut scene = Scene::new();
    scene.store.heartbeats = vec![beat(scene.now - TimeDelta::hours(5), scene.now)];
    scene.store.lease_taken_before = Some("advance_judged");
    let judged_before = scene.store.progress.judged_to;
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        Vec::new(),
    ));
    let result = scene.round(&x, scene.now).await;
    assert!(matches!(result, Err(Error::LeaseLost(_))), "{result:?}");
    assert_eq!(scene.store.progress.judged_to, judged_before);

    // Before tracking begins (the first round ever).
    let mut scene = Scene::new();
    scene.store.progress = Progress::default();
    scene.store.lease_taken_before = Some("begin_tracking");
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        Vec::new(),
    ));
    let result = scene.round(&x, scene.now).await;
    assert!(matches!(result, Err(Error::LeaseLost(_))), "{result:?}");
    assert_eq!(scene.store.progress, Progress::default());
}

#[tokio::test]
async fn a_used_up_replay_budget_holds_the_window() {
    let mut scene = Scene::new();
    for minute in 0..100 {
        scene.store.x_requests.push((
            "replay_submit".to_owned(),
            scene.now - TimeDelta::minutes(minute % 10),
            "ok".to_owned(),
        ));
    }
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        Vec::new(),
    ));
    scene.round(&x, scene.now).await.expect("a round");
    assert!(submitted(&x).is_empty());
    assert_eq!(scene.store.only_window().state, WindowState::Pending);
    assert_eq!(
        scene.store.x_requests.len(),
        101,
        "only the webhook list was asked"
    );
}

#[tokio::test]
async fn a_complete_job_is_fenced_then_reconciled_once_everything_before_is_stored() {
    let mut scene = Scene::new();
    let x = at_x(FakeX::answering(
        scene.now - TimeDelta::hours(48),
        vec![Ok(job("j1"))],
    ));
    scene.round(&x, scene.now).await.expect("a round");
    scene
        .store
        .job_states
        .insert("j1".into(), "Complete".into());
    // Complete: fences are written after the completion was seen.
    let fences_before = *scene.fences.written.lock().expect("not poisoned");
    scene
        .round(&x, scene.now + TimeDelta::minutes(1))
        .await
        .expect("a round");
    assert_eq!(
        *scene.fences.written.lock().expect("not poisoned"),
        fences_before + 1
    );
    let fence_at = scene.store.only_window().fence_at.expect("fenced");
    assert_eq!(scene.store.only_window().state, WindowState::Submitted);
    // The consumer has not stored those fences yet: still in flight.
    scene
        .round(&x, scene.now + TimeDelta::minutes(2))
        .await
        .expect("a round");
    assert_eq!(scene.store.only_window().state, WindowState::Submitted);
    // Stored, and the receivers reported past the fence without refusing.
    scene.store.fences = (Some(fence_at + TimeDelta::minutes(1)), 1);
    scene
        .store
        .heartbeats
        .push(beat(scene.now, fence_at + TimeDelta::minutes(1)));
    scene
        .round(&x, scene.now + TimeDelta::minutes(3))
        .await
        .expect("a round");
    assert_eq!(scene.store.only_window().state, WindowState::Reconciled);
    assert_eq!(submitted(&x).len(), 1, "never submitted twice");
}
